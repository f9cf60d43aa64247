"""Call harpd directly with Deferred callbacks; collect a stream with all().

Run: HARPD_PASSWORD=... python direct_callbacks.py [HOST [PORT [CA_FILE]]]
"""
import os
import sys

from twisted.internet import task

from txharp.server import HarpServer


def main(reactor, host="web01.example.net", port="4306", ca_file="/etc/harp/ca.pem"):
    server = HarpServer(host, "alice", os.environ["HARPD_PASSWORD"], int(port),
                        ca_file=ca_file, reactor=reactor)
    d = server.add(a=2, b=3)  # named arguments travel as a JSON object
    d.addCallback(lambda total: print("add:", total))
    d.addCallback(lambda _: server.tail_log("/var/log/syslog", 2))
    d.addCallback(lambda stream: stream.all())  # packets, then Result(value)
    d.addCallback(print)
    return d


if __name__ == "__main__":
    task.react(main, sys.argv[1:])
