"""Queues, time limits, info and cancelling.

Run: python queues.py [DISPATCHER [PORT]]
"""
import sys

from twisted.internet import defer, task

from txharp.caller import HarpCaller
from txharp.errors import RemoteError


async def main(reactor, dispatcher="localhost", port="3502"):
    rpc = HarpCaller(dispatcher, int(port), reactor=reactor)

    # One deployment at a time on web01: jobs naming the same queue wait
    # for each other.  The queue's concurrency is fixed by its first job.
    deploys = rpc.host("web01", queue={"deploy": "web01"}, concurrency=1,
                       info={"ticket": "OPS-1234"})
    first = await deploys.sleep(1)
    second = await deploys.sleep(1)
    status = await second.status()
    print("second is queued:", status.start_time is None, "info:", status.info)
    print("cancelled the queued job:", await second.cancel())
    print("first returned:", await first.get())

    # max_exec_time bounds the whole run; timeout bounds each wait for
    # the daemon.  Time spent queued counts toward neither.
    limited = rpc.host("web01", max_exec_time=1, timeout=30)
    job = await limited.sleep(60)
    try:
        await job.get()
    except RemoteError as error:
        print("error:", error.type, "-", error.message)


if __name__ == "__main__":
    task.react(
        lambda reactor, *argv: defer.Deferred.fromCoroutine(main(reactor, *argv)),
        sys.argv[1:],
    )
