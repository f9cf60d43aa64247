"""Telling the ways a call can fail apart.

Run: python errors.py [DISPATCHER [PORT]]
"""
import sys

from twisted.internet import defer, task

from txharp.caller import HarpCaller
from txharp.errors import (
    CancelledException,
    CommunicationError,
    RemoteError,
    RemoteException,
)


async def run(job):
    try:
        return await job.get()
    except RemoteException as e:  # the procedure raised
        print(f"procedure raised {e.type}: {e.message}")
    except RemoteError as e:  # the call could not run or finish
        print(f"{e.type}: {e.message} {e.data or ''}")
    except CancelledException:
        print("the job was cancelled")


async def main(reactor, dispatcher="localhost", port="3502"):
    rpc = HarpCaller(dispatcher, int(port), reactor=reactor)
    try:
        await run(await rpc.web01.add(1, "two"))
        await run(await rpc.host("no-such-host").uptime())
        job = await rpc.web01.sleep(60)
        await job.cancel()
        await run(job)
        # result() returns what get() raises, without raising it:
        print(repr(await job.result()))
    except CommunicationError as e:  # the dispatcher could not be reached
        print("cannot talk to the dispatcher:", e)
        raise


if __name__ == "__main__":
    task.react(
        lambda reactor, *argv: defer.Deferred.fromCoroutine(main(reactor, *argv)),
        sys.argv[1:],
    )
