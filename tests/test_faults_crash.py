"""harp-proxy killed with SIGKILL at random points of a mixed workload (issue item 5).

End-to-end over loopback: ``twistd -n harp-proxy`` runs as a
subprocess against the fake TLS daemons of :mod:`tests.test_faults_relay`
(in this process).  Each round submits a mix of jobs (plain results,
exceptions, slow streams, long calls, queued calls, cancels, an unknown
host) from concurrent clients and kills the proxy with SIGKILL at a random
moment.  Before restarting, the job store must pass ``PRAGMA
integrity_check`` and hold no duplicated data (packet numbers contiguous
and matching the job's count, one end per job); after restarting:

* every job a client saw finish (its end *and* its read-only answers
  received before the kill) answers byte for byte as before
  (``get_result``, ``get_status``, ``read_stream``), in every later round;
* every other job has ended: ``missing_result``, or — for a job that
  ended just before the kill without the client hearing of it — the end
  its procedure gives;
* the restarted proxy serves new calls.

Rounds are bounded (``ROUNDS``, 3 in CI) and seeded, so a failure names the
seed that reproduces it.
"""
from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
from typing import Any, Dict, List, Optional, Tuple

from twisted.internet import reactor
from twisted.internet.defer import Deferred, ensureDeferred, gatherResults
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.protocol import Protocol
from twisted.trial.unittest import TestCase

from tests.loopback import free_port, raw_request
from tests.test_faults_relay import Daemons, sleep
from txharp.caller import HarpCaller
from txharp.errors import CommunicationError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROUNDS = int(os.environ.get("TXHARP_CRASH_ROUNDS", "3"))
JOBS_PER_ROUND = 24
MISSING = b'{"error":{"type":"missing_result","message":"job interrupted abruptly"}}\n'


async def answers(port: int, job_id: str) -> List[bytes]:
    out = [
        await raw_request(port, {"harpcaller": 1, "get_result": job_id, "wait": False}),
        await raw_request(port, {"harpcaller": 1, "get_status": job_id}),
        await raw_request(port, {"harpcaller": 1, "read_stream": job_id}),
    ]
    for answer in out:
        if not answer.endswith(b"\n"):
            raise CommunicationError("incomplete answer")
    return out


#: Each kind of job: how to submit it, and the ends it may have.
KINDS: Dict[str, Tuple[Any, List[bytes]]] = {
    "echo": (lambda rpc, r: rpc.h.echo(r, "zażółć"), []),
    "fail": (lambda rpc, r: rpc.h.fail(), [b'{"exception":{"type":"TestFailure","message":"intentional failure"}}\n']),
    "stream": (lambda rpc, r: rpc.h.slow_stream(r % 40 + 1, 0.01), [b'{"result":"done"}\n']),
    "long": (lambda rpc, r: rpc.h.sleep(30), []),
    "queued": (lambda rpc, r: rpc.host("h", queue={"crash": 1}, concurrency=1).sleep(0.2), [b'{"result":0.2}\n']),
    "nohost": (lambda rpc, r: rpc.nohost.echo(), [b'{"error":{"type":"unknown_host","message":"host unknown","data":{"host":"nohost"}}}\n']),
    "cancelled": (lambda rpc, r: rpc.h.sleep(30), [b'{"cancelled":true}\n']),
}


class CrashTests(TestCase):
    """End-to-end over loopback: SIGKILL of ``twistd harp-proxy`` at random points."""

    timeout = 120

    async def _setUp(self) -> None:
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)
        self.daemons = Daemons()
        await self.daemons.start(self.directory)
        self.data_dir = os.path.join(self.directory, "data")
        self.port = free_port()
        self.process: Optional[subprocess.Popen[bytes]] = None
        self.starts = 0

    def setUp(self) -> "Deferred[None]":
        return ensureDeferred(self._setUp())

    def tearDown(self) -> "Deferred[None]":
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        return ensureDeferred(self.daemons.stop())

    async def start_proxy(self) -> None:
        self.starts += 1
        log_path = os.path.join(self.directory, f"proxy-{self.starts}.log")
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
        with open(log_path, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=",
                 "--logfile=-", "harp-proxy",
                 "--listen", f"tcp:{self.port}:interface=127.0.0.1", "--hosts", self.daemons.hosts_file,
                 "--data-dir", self.data_dir, "--ca-file", self.daemons.ca_file],
                cwd=self.directory, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            )
        for _ in range(400):
            if self.process.poll() is not None:
                with open(log_path) as f:
                    self.fail(f"harp-proxy exited:\n{f.read()}")
            try:
                await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.port), Protocol())
                return
            except ConnectionRefusedError:
                await sleep(0.05)
        self.fail("harp-proxy did not start listening")

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def check_store(self, seed: int) -> Dict[str, Optional[str]]:
        """The killed proxy's store: intact, nothing duplicated; returns job → end (None if unended)."""
        path = os.path.join(self.data_dir, "jobs.sqlite3")
        connection = sqlite3.connect(path)
        try:
            self.assertEqual(connection.execute("PRAGMA integrity_check").fetchall(), [("ok",)], seed)
            rows = connection.execute(
                "SELECT j.id, j.packet_count, j.outcome, count(p.number), min(p.number), max(p.number)"
                " FROM jobs j LEFT JOIN packets p ON p.job_id = j.id GROUP BY j.id").fetchall()
            for job_id, packet_count, outcome, count, first, last in rows:
                self.assertEqual(count, packet_count, (seed, job_id))
                if count:
                    self.assertEqual((first, last), (0, count - 1), (seed, job_id, "packet numbers not contiguous"))
            orphans = connection.execute(
                "SELECT count(*) FROM packets WHERE job_id NOT IN (SELECT id FROM jobs)").fetchone()[0]
            self.assertEqual(orphans, 0, seed)
            return {job_id: outcome for job_id, _, outcome, _, _, _ in rows}
        finally:
            connection.close()

    async def round(self, seed: int, seen: Dict[str, List[bytes]], submitted: Dict[str, str]) -> None:
        rng = random.Random(seed)
        rpc = HarpCaller("127.0.0.1", self.port, reactor=reactor, timeout=10)

        async def client(number: int) -> None:
            await sleep(rng.uniform(0, 0.8))
            kind = rng.choice(sorted(KINDS))
            try:
                job = await KINDS[kind][0](rpc, number)
                submitted[job.id()] = kind
                if kind == "cancelled":
                    await sleep(rng.uniform(0, 0.2))
                    await job.cancel()
                if kind == "stream" and rng.random() < 0.5:
                    await job.follow(since=0).all()
                await job.result(wait=True, timeout=15)
                seen[job.id()] = await answers(self.port, job.id())
            except CommunicationError:
                pass  # the proxy died under this client

        clients = [ensureDeferred(client(n)) for n in range(JOBS_PER_ROUND)]
        await sleep(rng.uniform(0.15, 1.2))
        self.kill()
        await gatherResults(clients)

    def test_sigkill_at_random_points(self) -> "Deferred[None]":
        async def run() -> None:
            seen: Dict[str, List[bytes]] = {}
            submitted: Dict[str, str] = {}
            interrupted = 0
            await self.start_proxy()
            for number in range(ROUNDS):
                seed = 7919 * (number + 1)
                await self.round(seed, seen, submitted)
                stored = self.check_store(seed)
                self.assertTrue(set(submitted) <= set(stored), "an acknowledged job is not in the store")
                await self.start_proxy()
                for job_id, before in seen.items():
                    self.assertEqual(await answers(self.port, job_id), before, (seed, job_id))
                for job_id, kind in submitted.items():
                    if job_id in seen:
                        continue
                    result, status, stream = await answers(self.port, job_id)
                    self.assertIsNotNone(json.loads(status)["time"]["end"], (seed, job_id))
                    self.assertEqual(stream.splitlines()[-1] + b"\n", result, (seed, job_id))
                    packets = [json.loads(line)["packet"] for line in stream.splitlines()[:-1]]
                    self.assertEqual(packets, list(range(len(packets))), (seed, job_id))
                    seen[job_id] = [result, status, stream]  # from now on, it must not change
                    if result == MISSING:
                        interrupted += 1
                        continue
                    possible = KINDS[kind][1]
                    if kind == "echo":
                        self.assertTrue(result.startswith(b'{"result":['), (seed, kind, result))
                    else:
                        self.assertIn(result, possible, (seed, kind, result))
                # Every job in the store has exactly one end now.
                self.assertEqual([job for job, end in self.check_store_live().items() if end is None], [])
            print(f"crash rounds: {ROUNDS}, jobs {len(submitted)}, seen finished {len(seen)}, interrupted {interrupted}")
            self.assertGreater(interrupted, 0, "no round killed the proxy while a job ran")
            self.assertGreater(len(seen), 0)
            rpc = HarpCaller("127.0.0.1", self.port, reactor=reactor, timeout=10)
            self.assertEqual(await (await rpc.h.echo(7)).get(), [7])
            self.process.send_signal(signal.SIGTERM)
            self.process.wait()

        return ensureDeferred(run())

    def check_store_live(self) -> Dict[str, Optional[str]]:
        """Jobs and their ends, read while the proxy runs (WAL readers do not block it)."""
        connection = sqlite3.connect(os.path.join(self.data_dir, "jobs.sqlite3"), timeout=10)
        try:
            return dict(connection.execute("SELECT id, outcome FROM jobs").fetchall())
        finally:
            connection.close()
