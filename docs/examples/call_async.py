"""Call a streaming procedure through harp-proxy with async/await.

Run: python call_async.py [DISPATCHER [PORT]]
"""
import sys

from twisted.internet import defer, task

from txharp.caller import HarpCaller


async def main(reactor, dispatcher="localhost", port="3502"):
    rpc = HarpCaller(dispatcher, int(port), reactor=reactor)
    job = await rpc.web01.tail_log("/var/log/syslog", 3)
    async for line in job.follow(since=0):  # every packet, as it is produced
        print(line)
    print("result:", await job.get())


if __name__ == "__main__":
    task.react(
        lambda reactor, *argv: defer.Deferred.fromCoroutine(main(reactor, *argv)),
        sys.argv[1:],
    )
