"""Trust a harpd by its certificate's SHA-256 fingerprint instead of a CA.

Run: HARPD_PASSWORD=... python direct_pinned.py HOST PORT FINGERPRINT
"""
import os
import sys

from twisted.internet import defer, task

from txharp.server import HarpServer


async def main(reactor, host, port, fingerprint):
    # 64 hex digits; colons and upper case (as openssl prints them) are fine.
    server = HarpServer(host, "alice", os.environ["HARPD_PASSWORD"], int(port),
                        pins=[fingerprint], reactor=reactor)
    print("uptime:", await server.uptime())


if __name__ == "__main__":
    task.react(
        lambda reactor, *argv: defer.Deferred.fromCoroutine(main(reactor, *argv)),
        sys.argv[1:],
    )
