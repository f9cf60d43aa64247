"""Call a procedure through harp-proxy and wait for its result, with Deferreds.

Run: python call_deferreds.py [DISPATCHER [PORT]]
"""
import sys

from twisted.internet import task

from txharp.caller import HarpCaller


def main(reactor, dispatcher="localhost", port="3502"):
    rpc = HarpCaller(dispatcher, int(port), reactor=reactor)
    d = rpc.web01.uptime()  # fires with a RemoteCall once the job is accepted
    d.addCallback(submitted)
    return d


def submitted(job):
    print("submitted job", job.id())
    d = job.get()  # fires with the value when the job ends
    d.addCallback(lambda uptime: print("uptime:", uptime))
    d.addCallback(lambda _: job.status())
    d.addCallback(show_status)
    return d


def show_status(status):
    print(f"{status.procedure} ran on {status.host}, finished: {status.finished}")


if __name__ == "__main__":
    task.react(main, sys.argv[1:])
