"""Reading a job's stream: follow() and stream(), since/recent/numbered,
async for, each() and all().

Run: python streams.py [DISPATCHER [PORT]]
"""
import sys

from twisted.internet import defer, task

from txharp.caller import CALL_NOT_FINISHED, HarpCaller


async def main(reactor, dispatcher="localhost", port="3502"):
    rpc = HarpCaller(dispatcher, int(port), reactor=reactor)
    job = await rpc.web01.tail_log("/var/log/syslog", 5)

    # Live, from the first packet, with packet numbers.
    async for number, line in job.follow(since=0, numbered=True):
        print(number, line)

    # The job has ended: its packets stay readable.  The last two:
    print(await job.follow(recent=2).all())

    # Page-wise: what is recorded from packet 3 on, one callback per packet.
    page = job.stream(since=3)
    await page.each(print)
    ended = page.result() is not CALL_NOT_FINISHED
    print("job ended:", ended, "value:", page.result())


if __name__ == "__main__":
    task.react(
        lambda reactor, *argv: defer.Deferred.fromCoroutine(main(reactor, *argv)),
        sys.argv[1:],
    )
