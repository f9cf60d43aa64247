"""Reach an original harpd, which speaks TLS 1.0 only.

Run: HARPD_PASSWORD=... python direct_legacy.py HOST PORT CA_FILE
"""
import os
import sys

from twisted.internet import defer, task

from txharp.server import HarpServer


async def main(reactor, host, port, ca_file):
    server = HarpServer(host, "alice", os.environ["HARPD_PASSWORD"], int(port),
                        ca_file=ca_file,
                        tls_minimum="1.0",  # explicit opt-in; the default is TLS 1.2
                        reactor=reactor)
    print("uptime:", await server.uptime())


if __name__ == "__main__":
    task.react(
        lambda reactor, *argv: defer.Deferred.fromCoroutine(main(reactor, *argv)),
        sys.argv[1:],
    )
