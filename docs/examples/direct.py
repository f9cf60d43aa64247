"""Call harpd directly over TLS, without a dispatcher.

Run: HARPD_PASSWORD=... python direct.py [HOST [PORT [CA_FILE]]]
"""
import os
import sys

from twisted.internet import defer, task

from txharp.errors import RemoteException
from txharp.server import HarpServer, Result


async def main(reactor, host="web01.example.net", port="4306", ca_file="/etc/harp/ca.pem"):
    server = HarpServer(host, "alice", os.environ["HARPD_PASSWORD"], int(port),
                        ca_file=ca_file, reactor=reactor)

    print("uptime:", await server.uptime())  # a plain procedure: its value

    stream = await server.tail_log("/var/log/syslog", 3)  # a streaming one
    async for item in stream:
        if isinstance(item, Result):  # always the last item
            print("result:", item.value)
        else:
            print("packet:", item)

    try:
        await server.add(1, "two")
    except RemoteException as e:
        print(f"add raised {e.type}: {e.message}")


if __name__ == "__main__":
    task.react(
        lambda reactor, *argv: defer.Deferred.fromCoroutine(main(reactor, *argv)),
        sys.argv[1:],
    )
