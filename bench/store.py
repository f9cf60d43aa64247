"""How many jobs and packets per second harp-proxy's SQLite job store sustains.

    python bench/store.py [--jobs 50000] [--packets 100000] [--durability normal|full]

Everything goes through the real store (its own thread, group commit) on a
file in a temporary directory, as harp-proxy uses it: every job is created
and ended (two committed writes each, all issued at once), then one job
gets ``--packets`` stream packets appended one request each; last,
``--sequential`` jobs are created and ended one awaited write at a time.  A Deferred
firing means its write is committed, so the rates are durable writes.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from typing import Any, Dict, List

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from twisted.internet import defer, task  # noqa: E402

from txharp.proxy.store import JobRecord, SQLiteJobStore  # noqa: E402
from txharp.wire import CallRequest, ResultReply  # noqa: E402


async def measure(reactor: Any, args: argparse.Namespace) -> Dict[str, Any]:
    with tempfile.TemporaryDirectory() as directory:
        store = SQLiteJobStore(os.path.join(directory, "jobs.db"), reactor=reactor,
                               durability=args.durability)
        await store.open()
        now = int(time.time())
        call = CallRequest("bench", "echo", [1])
        ids = [f"job-{n}" for n in range(args.jobs)]

        commits0, start = store.commits, time.perf_counter()
        await defer.gatherResults([store.create_job(JobRecord.from_call(i, call, now)) for i in ids])
        await defer.gatherResults([store.end_job(i, ResultReply([1]), now) for i in ids])
        jobs_seconds, job_commits = time.perf_counter() - start, store.commits - commits0

        streamer = "streamer"
        await store.create_job(JobRecord.from_call(streamer, call, now))
        commits0, start = store.commits, time.perf_counter()
        writes: List[Any] = [store.append_packet(streamer, n, {"n": n, "pad": "x" * 16})
                             for n in range(args.packets)]
        await defer.gatherResults(writes)
        packets_seconds, packet_commits = time.perf_counter() - start, store.commits - commits0
        assert await store.packet_count(streamer) == args.packets

        # One job at a time, each write awaited: the latency of one commit.
        start = time.perf_counter()
        for n in range(args.sequential):
            job_id = f"seq-{n}"
            await store.create_job(JobRecord.from_call(job_id, call, now))
            await store.end_job(job_id, ResultReply([1]), now)
        sequential_seconds = time.perf_counter() - start
        await store.close()
    return {
        "jobs": args.jobs, "jobs_per_s": args.jobs / jobs_seconds, "job_commits": job_commits,
        "packets": args.packets, "packets_per_s": args.packets / packets_seconds,
        "packet_commits": packet_commits, "durability": args.durability,
        "sequential": args.sequential, "sequential_per_s": args.sequential / sequential_seconds,
    }


def main(argv: List[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=50000)
    parser.add_argument("--packets", type=int, default=100000)
    parser.add_argument("--sequential", type=int, default=2000,
                        help="jobs created and ended one write at a time")
    parser.add_argument("--durability", choices=("normal", "full"), default="normal")
    args = parser.parse_args(argv)

    async def run(reactor: Any) -> None:
        r = await measure(reactor, args)
        print(f"create+end  {r['jobs']:>8} jobs     {r['jobs_per_s']:>9,.0f} jobs/s     "
              f"({r['job_commits']} commits, durability={r['durability']})")
        print(f"append      {r['packets']:>8} packets  {r['packets_per_s']:>9,.0f} packets/s  "
              f"({r['packet_commits']} commits)")
        print(f"one by one  {r['sequential']:>8} jobs     {r['sequential_per_s']:>9,.0f} jobs/s     "
              "(each write awaited before the next)")

    task.react(lambda reactor: defer.Deferred.fromCoroutine(run(reactor)))


if __name__ == "__main__":
    main(sys.argv[1:])
