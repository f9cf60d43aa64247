#!/usr/bin/env python3
"""Load test of harp-proxy and txharp's harpd together, every outcome checked.

::

    python bench/load.py                      # full size (see FULL below)
    python bench/load.py --jobs 200 --packets 200 --followers 20 --queues 8
    python bench/load.py --json               # the report as one JSON object too

What runs, all on 127.0.0.1, in a temporary directory (removed afterwards
unless ``--keep``):

* ``twistd -n harpd`` (txharp's daemon: TLS, one child process per call)
  with the procedures written by :func:`write_procedures`;
* ``twistd -n harp-proxy`` relaying to it (a hosts file naming it ``load``,
  its CA file to verify it);
* in this process, on the reactor: the clients (:class:`txharp.caller.HarpCaller`).

The workload: ``jobs`` calls spread over ``queues`` queues whose concurrency
limits cycle through ``limits``; every third call streams ``packets``
packets; a few calls raise; ``followers`` live followers (a share of them
slow: they pause while reading, so reading is paused and the proxy must
fall back to its store) follow streaming jobs from packet 0; a share of the
jobs is cancelled at a random moment.  Every call's client waits for its
end with ``get_result``.

What is checked (each violation is listed in the report, and makes the
command exit 1 and the CI test fail):

* every job ends exactly once with the right outcome: its value (or its
  exception), or ``cancelled`` exactly when ``cancel`` answered true; the
  store holds one ended record per job and nothing else;
* every packet of every streaming job is recorded, numbered from 0 with no
  gap or repeat and with the right data (a cancelled job: a correct
  prefix), and every follower received exactly that sequence and the
  job's end;
* no queue ever ran more jobs at once than its limit.  This is measured
  on the harpd side: each procedure registers itself in a per-queue
  directory when it starts, counts the registered procedures still running
  (a process with SIGTERM pending — a cancelled call being killed — does
  not count), appends the count to a file, and unregisters when it ends or
  is terminated;
* the proxy's peak memory (``VmHWM`` of its process, from
  ``/proc/PID/status``) stays under ``max_rss_mib``.

The same :func:`run_load` runs in CI at a small size (``tests/test_load.py``).
Everything is bounded: a deadline (``deadline`` seconds) aborts the run, and
the processes are always stopped.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for _path in (ROOT, HERE):  # this checkout's txharp; bench/servers.py
    if _path not in sys.path:
        sys.path.insert(0, _path)

from twisted.internet.defer import Deferred, DeferredSemaphore, gatherResults  # noqa: E402
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol  # noqa: E402
from twisted.internet.error import ConnectError  # noqa: E402
from twisted.internet.protocol import Protocol  # noqa: E402
from twisted.internet.task import deferLater  # noqa: E402

from txharp.caller import CALL_CANCELLED, HarpCaller  # noqa: E402
from txharp.errors import HarpException, RemoteError, RemoteException  # noqa: E402
from txharp.testing.certs import TestPKI  # noqa: E402

from servers import child_env, free_port  # noqa: E402

__all__ = ["LoadConfig", "LoadReport", "FULL", "CI", "run_load", "main"]

USER, PASSWORD = "loader", "l0ad-s3cret"


@dataclass(frozen=True)
class LoadConfig:
    """The size and shape of one run."""

    jobs: int = 1000
    queues: int = 20
    limits: Tuple[int, ...] = (1, 2, 3, 5, 8)
    packets: int = 1000
    packet_bytes: int = 64
    followers: int = 100
    slow_share: float = 0.3
    #: a slow follower sleeps ``slow_pause`` seconds every ``slow_every`` packets
    slow_pause: float = 0.02
    slow_every: int = 25
    cancel_share: float = 0.05
    fail_share: float = 0.05
    #: seconds a plain call runs (uniformly chosen in this range)
    duration: Tuple[float, float] = (0.01, 0.15)
    #: submissions in flight at once
    submit_window: int = 64
    seed: int = 20261124
    deadline: float = 1500.0
    max_rss_mib: float = 400.0
    harpd_max_calls: int = 128
    #: harpd's --kill-grace
    kill_grace: float = 2.0


#: The full-size run of ``python bench/load.py``.
FULL = LoadConfig()
#: The size ``tests/test_load.py`` runs in CI.
CI = LoadConfig(jobs=150, queues=8, packets=200, followers=15, slow_pause=0.02, slow_every=10,
                cancel_share=0.1, deadline=240.0, max_rss_mib=300.0)


@dataclass
class LoadReport:
    """The figures of one run; ``problems`` lists every violated property."""

    config: Dict[str, Any]
    jobs: int = 0
    outcomes: Dict[str, int] = field(default_factory=dict)
    streaming_jobs: int = 0
    packets_recorded: int = 0
    followers: int = 0
    slow_followers: int = 0
    packets_followed: int = 0
    cancel_requests: int = 0
    cancelled: int = 0
    proxy_peak_rss_kib: int = 0
    harpd_peak_rss_kib: int = 0
    max_concurrency: Dict[str, Tuple[int, int]] = field(default_factory=dict)  # queue -> (max seen, limit)
    procedure_starts: int = 0
    wall_seconds: float = 0.0
    problems: List[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [
            f"jobs               {self.jobs} ({', '.join(f'{k} {v}' for k, v in sorted(self.outcomes.items()))})",
            f"streaming jobs     {self.streaming_jobs}, packets recorded {self.packets_recorded}",
            f"followers          {self.followers} ({self.slow_followers} slow), "
            f"packets delivered to followers {self.packets_followed}",
            f"cancel requests    {self.cancel_requests} ({self.cancelled} jobs cancelled)",
            f"procedure starts   {self.procedure_starts}",
            f"peak RSS           harp-proxy {self.proxy_peak_rss_kib / 1024:.1f} MiB (VmHWM), "
            f"harpd {self.harpd_peak_rss_kib / 1024:.1f} MiB",
            "max concurrency    " + ", ".join(
                f"{q}: {seen}/{limit}" for q, (seen, limit) in sorted(self.max_concurrency.items(),
                                                                      key=lambda kv: int(kv[0][1:]))),
            f"wall time          {self.wall_seconds:.1f} s",
            f"problems           {len(self.problems)}",
        ]
        lines += [f"  - {problem}" for problem in self.problems[:50]]
        return "\n".join(lines)


# ------------------------------------------------------------ procedures

PROCEDURES = r'''
"""Procedures of bench/load.py: they record how many calls of their queue run at once."""
import os
import signal
import time

from harpd.proc import Result, procedure, streaming_procedure

SIGTERM_BIT = 1 << (signal.SIGTERM - 1)


class LoadFailure(Exception):
    pass


def _running(pid):
    """Whether pid runs and is not being terminated (SIGTERM pending)."""
    try:
        with open("/proc/%d/status" % pid) as f:
            status = f.read()
    except OSError:
        return False
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    if fields.get("State", "").strip()[:1] in ("Z", "X"):
        return False
    for key in ("SigPnd", "ShdPnd"):
        if int(fields.get(key, "0").strip() or "0", 16) & SIGTERM_BIT:
            return False
    return True


def _enter(markers, queue):
    directory = os.path.join(markers, "q%d" % queue)
    os.makedirs(directory, exist_ok=True)
    mine = os.path.join(directory, str(os.getpid()))

    def terminated(signum, frame):
        try:
            os.unlink(mine)
        except OSError:
            pass
        os._exit(143)

    signal.signal(signal.SIGTERM, terminated)
    with open(mine, "w"):
        pass
    running = sum(1 for name in os.listdir(directory) if _running(int(name)))
    fd = os.open(os.path.join(markers, "starts-q%d" % queue), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, b"%d\n" % running)
    finally:
        os.close(fd)
    return mine


def _leave(mine):
    try:
        os.unlink(mine)
    except OSError:
        pass


@procedure
def work(markers, queue, job, seconds, fail):
    mine = _enter(markers, queue)
    try:
        time.sleep(seconds)
        if fail:
            raise LoadFailure("job %d failed on purpose" % job)
        return {"job": job, "queue": queue}
    finally:
        _leave(mine)


@streaming_procedure
def stream(markers, queue, job, packets, size):
    mine = _enter(markers, queue)
    try:
        pad = "x" * size
        for n in range(packets):
            yield {"j": job, "n": n, "pad": pad}
    finally:
        _leave(mine)
    yield Result("done-%d" % job)
'''


def write_procedures(path: str) -> None:
    with open(path, "w") as f:
        f.write(PROCEDURES)


def expected_packet(job: int, number: int, size: int) -> Dict[str, Any]:
    return {"j": job, "n": number, "pad": "x" * size}


# -------------------------------------------------------------- processes


TWISTD = "from twisted.scripts.twistd import run; run()"


def peak_rss_kib(pid: int) -> int:
    """``VmHWM`` (peak resident set size) of a live process, in KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


class Servers:
    """harpd and harp-proxy as ``twistd -n`` subprocesses in ``directory``."""

    def __init__(self, directory: str, config: LoadConfig) -> None:
        self.directory = directory
        self.config = config
        self.processes: Dict[str, subprocess.Popen[bytes]] = {}
        self.markers = os.path.join(directory, "markers")
        os.makedirs(self.markers)
        self.pki = TestPKI(os.path.join(directory, "pki"))
        self.harpd_port = free_port()
        self.proxy_port = free_port()
        self.data_dir = os.path.join(directory, "proxy-data")

    def _start(self, name: str, arguments: List[str]) -> None:
        log = open(os.path.join(self.directory, f"{name}.log"), "wb")
        self.processes[name] = subprocess.Popen(
            [sys.executable, "-c", TWISTD, "-n", "--pidfile=", "--logfile=-"] + arguments,
            cwd=self.directory, env=child_env(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        )
        log.close()

    def start(self) -> None:
        procedures = os.path.join(self.directory, "load_procedures.py")
        write_procedures(procedures)
        config = os.path.join(self.directory, "harpd.yaml")
        with open(config, "w") as f:
            f.write(
                "network:\n  address: 127.0.0.1\n"
                f"  port: {self.harpd_port}\n  certfile: {self.pki.chain_file}\n  keyfile: {self.pki.key_file}\n"
                f"authentication:\n  module: inconfig\n  users: {{{USER}: 'plain:{PASSWORD}'}}\n"
            )
        hosts = os.path.join(self.directory, "hosts.json")
        with open(hosts, "w") as f:
            f.write(json.dumps({"hostname": "load", "address": "127.0.0.1", "port": self.harpd_port,
                                "credentials": {"user": USER, "password": PASSWORD}}) + "\n")
        self._start("harpd", ["harpd", "--config", config, "--procedures", procedures,
                              "--max-calls", str(self.config.harpd_max_calls), "--max-waiting", "4096",
                              "--idle-timeout", "120", "--kill-grace", str(self.config.kill_grace)])
        self._start("harp-proxy", ["harp-proxy", "--listen", f"tcp:{self.proxy_port}:interface=127.0.0.1",
                                   "--hosts", hosts, "--data-dir", self.data_dir, "--ca-file", self.pki.ca_file])

    def check_alive(self) -> None:
        for name, process in self.processes.items():
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited with {process.returncode}:\n{self.log_tail(name)}")

    def log_tail(self, name: str, size: int = 4000) -> str:
        try:
            with open(os.path.join(self.directory, f"{name}.log"), "rb") as f:
                return f.read()[-size:].decode("utf-8", "replace")
        except OSError:
            return ""

    def stop(self, timeout: float = 20.0) -> Dict[str, Optional[int]]:
        """SIGTERM everything, wait, SIGKILL what is left; the exit codes."""
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        codes: Dict[str, Optional[int]] = {}
        deadline = time.monotonic() + timeout
        for name, process in self.processes.items():
            try:
                codes[name] = process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                codes[name] = None
        return codes


async def wait_listening(reactor: Any, servers: Servers, port: int, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while True:
        servers.check_alive()
        try:
            protocol = await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=2), Protocol())
            protocol.transport.loseConnection()
            return
        except ConnectError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"nothing listens on port {port} after {seconds:g} s")
            await deferLater(reactor, 0.05, lambda: None)


# --------------------------------------------------------------- workload


@dataclass
class Plan:
    """One job of the workload, and what happened to it."""

    index: int
    queue: int
    kind: str  # "work", "fail" or "stream"
    seconds: float = 0.0
    cancel_after: Optional[float] = None
    followers: List[bool] = field(default_factory=list)  # one entry per follower: slow?
    job_id: Optional[str] = None
    cancel_answer: Optional[bool] = None
    outcome: Any = None
    followed: List[Tuple[List[Tuple[int, Any]], Any]] = field(default_factory=list)


def make_plans(config: LoadConfig) -> List[Plan]:
    rng = random.Random(config.seed)
    plans = []
    for index in range(config.jobs):
        if index % 3 == 0:
            kind = "stream"
        else:
            kind = "fail" if rng.random() < config.fail_share else "work"
        plan = Plan(index, index % config.queues, kind, seconds=round(rng.uniform(*config.duration), 3))
        if rng.random() < config.cancel_share:
            plan.cancel_after = rng.uniform(0.0, 2.0)
        plans.append(plan)
    streaming = [plan for plan in plans if plan.kind == "stream"]
    slow = round(config.followers * config.slow_share)
    for number in range(config.followers):
        if streaming:
            plan = streaming[(number * 7919) % len(streaming)]
            plan.followers.append(number % config.followers < slow)
    return plans


def expected_outcome(plan: Plan) -> Any:
    if plan.cancel_answer:
        return CALL_CANCELLED
    if plan.kind == "stream":
        return f"done-{plan.index}"
    if plan.kind == "fail":
        return RemoteException("LoadFailure", f"job {plan.index} failed on purpose")
    return {"job": plan.index, "queue": plan.queue}


def same_outcome(got: Any, expected: Any) -> bool:
    if isinstance(expected, RemoteException):
        return isinstance(got, RemoteException) and (got.type, got.message) == (expected.type, expected.message)
    return bool(got == expected) and type(got) is type(expected)


def describe(outcome: Any) -> str:
    if outcome is CALL_CANCELLED:
        return "cancelled"
    if isinstance(outcome, RemoteException):
        return "exception"
    if isinstance(outcome, RemoteError):
        return f"error:{outcome.type}"
    return "result"


async def run_workload(reactor: Any, config: LoadConfig, rpc: HarpCaller, servers: Servers,
                       plans: List[Plan], report: LoadReport) -> None:
    window = DeferredSemaphore(config.submit_window)
    rng = random.Random(config.seed + 1)

    async def follow(plan: Plan, job: Any, slow: bool) -> None:
        stream = job.follow(since=0, numbered=True)
        items: List[Tuple[int, Any]] = []

        def take(item: Tuple[int, Any]) -> Any:
            items.append(item)
            if slow and len(items) % config.slow_every == 0:
                return deferLater(reactor, config.slow_pause, lambda: None)
            return None

        try:
            await stream.each(take)
            plan.followed.append((items, stream.result()))
        except HarpException as e:
            plan.followed.append((items, e))

    async def one(plan: Plan) -> None:
        server = rpc.host("load", queue={"load": plan.queue}, concurrency=config.limits[plan.queue % len(config.limits)])
        await window.acquire()
        try:
            if plan.kind == "stream":
                job = await server.stream(servers.markers, plan.queue, plan.index, config.packets, config.packet_bytes)
            else:
                job = await server.work(servers.markers, plan.queue, plan.index, plan.seconds, plan.kind == "fail")
        finally:
            window.release()
        plan.job_id = job.id()
        tasks = [Deferred.fromCoroutine(follow(plan, job, slow)) for slow in plan.followers]
        if plan.cancel_after is not None:
            await deferLater(reactor, plan.cancel_after, lambda: None)
            plan.cancel_answer = await job.cancel()
        plan.outcome = await job.result(wait=True)
        await gatherResults(tasks)

    async def guarded(plan: Plan) -> None:
        try:
            await one(plan)
        except Exception as e:  # a communication failure is a finding, not a crash of the bench
            report.problems.append(f"job {plan.index}: {type(e).__name__}: {e}")

    await gatherResults([Deferred.fromCoroutine(guarded(plan)) for plan in plans])
    del rng


async def verify(reactor: Any, config: LoadConfig, rpc: HarpCaller, plans: List[Plan], report: LoadReport) -> None:
    problems = report.problems
    window = DeferredSemaphore(32)
    outcomes: Counter[str] = Counter()

    async def check(plan: Plan) -> None:
        if plan.job_id is None:
            return
        job = rpc.job(plan.job_id)
        expected = expected_outcome(plan)
        outcomes[describe(plan.outcome)] += 1
        if not same_outcome(plan.outcome, expected):
            problems.append(f"job {plan.index} ({plan.kind}, cancel={plan.cancel_answer}): "
                            f"ended {plan.outcome!r}, expected {expected!r}")
        await window.acquire()
        try:
            again = await job.result()
            status = await job.status()
            packets = await job.stream(numbered=True).all() if plan.kind == "stream" else []
        finally:
            window.release()
        if not same_outcome(again, plan.outcome):
            problems.append(f"job {plan.index}: second get_result {again!r} differs from {plan.outcome!r}")
        if status.end_time is None:
            problems.append(f"job {plan.index}: status has no end time")
        if plan.kind != "stream":
            return
        report.streaming_jobs += 1
        report.packets_recorded += len(packets)
        want = [(n, expected_packet(plan.index, n, config.packet_bytes)) for n in range(len(packets))]
        if packets != want:
            problems.append(f"job {plan.index}: recorded packets are not 0..{len(packets) - 1} with the right data")
        if plan.outcome is not CALL_CANCELLED and len(packets) != config.packets:
            problems.append(f"job {plan.index}: {len(packets)} packets recorded, expected {config.packets}")
        for items, end in plan.followed:
            report.packets_followed += len(items)
            if items != packets:
                numbers = [n for n, _ in items]
                problems.append(f"job {plan.index}: a follower got {len(items)} packets "
                                f"(first {numbers[:3]}, last {numbers[-3:]}), the job recorded {len(packets)}")
            if not same_outcome(end, plan.outcome):
                problems.append(f"job {plan.index}: a follower saw the end {end!r}, the job {plan.outcome!r}")

    await gatherResults([Deferred.fromCoroutine(check(plan)) for plan in plans])
    report.outcomes = dict(outcomes)
    report.cancel_requests = sum(1 for plan in plans if plan.cancel_after is not None)
    report.cancelled = sum(1 for plan in plans if plan.cancel_answer)
    report.followers = sum(len(plan.followers) for plan in plans)
    report.slow_followers = sum(sum(plan.followers) for plan in plans)


def check_concurrency(config: LoadConfig, servers: Servers, plans: List[Plan], report: LoadReport) -> None:
    for queue in range(config.queues):
        limit = config.limits[queue % len(config.limits)]
        path = os.path.join(servers.markers, f"starts-q{queue}")
        try:
            with open(path) as f:
                counts = [int(line) for line in f if line.strip()]
        except FileNotFoundError:
            counts = []
        report.procedure_starts += len(counts)
        seen = max(counts, default=0)
        report.max_concurrency[f"q{queue}"] = (seen, limit)
        if seen > limit:
            problems = report.problems
            problems.append(f"queue {queue}: {seen} calls ran at once, its limit is {limit}")
        if counts and min(counts) < 1:
            report.problems.append(f"queue {queue}: a procedure did not see itself running")
    leftovers = [name for queue in os.listdir(servers.markers) if queue.startswith("q")
                 for name in os.listdir(os.path.join(servers.markers, queue))]
    if leftovers:
        report.problems.append(f"{len(leftovers)} procedures never unregistered (processes left behind?)")


def check_store(servers: Servers, plans: List[Plan], report: LoadReport) -> None:
    """After the proxy stopped: one ended record per job, packets contiguous, nothing else."""
    connection = sqlite3.connect(os.path.join(servers.data_dir, "jobs.sqlite3"))
    try:
        problems = report.problems
        ok = connection.execute("PRAGMA integrity_check").fetchall()
        if ok != [("ok",)]:
            problems.append(f"job store integrity check: {ok[:5]}")
        rows = {job_id: (end, outcome, count) for job_id, end, outcome, count in
                connection.execute("SELECT id, end_time, outcome_kind, packet_count FROM jobs")}
        ids = {plan.job_id for plan in plans if plan.job_id}
        if set(rows) != ids:
            problems.append(f"job store: {len(set(rows) - ids)} unknown jobs, {len(ids - set(rows))} missing")
        unended = [job_id for job_id, (end, _, _) in rows.items() if end is None]
        if unended:
            problems.append(f"job store: {len(unended)} jobs without an end")
        for job_id, count, low, high in connection.execute(
                "SELECT job_id, count(*), min(number), max(number) FROM packets GROUP BY job_id"):
            if (low, high) != (0, count - 1) or rows.get(job_id, (None, None, -1))[2] != count:
                problems.append(f"job store: packets of {job_id} not contiguous or miscounted")
    finally:
        connection.close()


async def run_load(reactor: Any, config: LoadConfig = CI, directory: Optional[str] = None,
                   keep: bool = False) -> LoadReport:
    """Run the whole load test; the report lists every violation in ``problems``."""
    report = LoadReport(config=asdict(config))
    own = directory is None
    directory = directory or tempfile.mkdtemp(prefix="txharp-load-")
    servers = Servers(directory, config)
    started = time.monotonic()
    timer = None
    try:
        servers.start()
        await wait_listening(reactor, servers, servers.harpd_port)
        await wait_listening(reactor, servers, servers.proxy_port)
        rpc = HarpCaller("127.0.0.1", servers.proxy_port, reactor=reactor, timeout=120)
        plans = make_plans(config)
        report.jobs = len(plans)
        workload = Deferred.fromCoroutine(run_workload(reactor, config, rpc, servers, plans, report))
        timer = reactor.callLater(config.deadline, workload.cancel)
        try:
            await workload
        except Exception as e:
            report.problems.append(f"the workload did not finish within {config.deadline:g} s ({type(e).__name__})")
            return report
        finally:
            if timer.active():
                timer.cancel()
        servers.check_alive()
        await verify(reactor, config, rpc, plans, report)
        report.proxy_peak_rss_kib = peak_rss_kib(servers.processes["harp-proxy"].pid)
        report.harpd_peak_rss_kib = peak_rss_kib(servers.processes["harpd"].pid)
        if report.proxy_peak_rss_kib > config.max_rss_mib * 1024:
            report.problems.append(f"harp-proxy peak RSS {report.proxy_peak_rss_kib} KiB over "
                                   f"{config.max_rss_mib:g} MiB")
        codes = servers.stop()
        for name, code in codes.items():
            if code not in (0, -signal.SIGTERM):  # twistd ends with the signal that stopped it
                report.problems.append(f"{name} did not stop cleanly on SIGTERM (exit {code})")
        check_concurrency(config, servers, plans, report)
        check_store(servers, plans, report)
        return report
    finally:
        servers.stop()
        report.wall_seconds = time.monotonic() - started
        if report.problems:
            report.problems.append(f"logs kept in {directory}")
        elif own and not keep:
            shutil.rmtree(directory, ignore_errors=True)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    defaults = FULL
    for name in ("jobs", "queues", "packets", "followers", "packet_bytes", "seed", "harpd_max_calls"):
        parser.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(defaults, name))
    for name in ("slow_share", "cancel_share", "fail_share", "deadline", "max_rss_mib", "kill_grace"):
        parser.add_argument("--" + name.replace("_", "-"), type=float, default=getattr(defaults, name))
    parser.add_argument("--ci", action="store_true", help="the small size CI runs")
    parser.add_argument("--keep", action="store_true", help="keep the working directory and logs")
    parser.add_argument("--json", action="store_true", help="also print the report as JSON")
    options = parser.parse_args(argv)
    base = CI if options.ci else FULL
    chosen = {name: getattr(options, name) for name in
              ("jobs", "queues", "packets", "followers", "packet_bytes", "seed", "harpd_max_calls",
               "slow_share", "cancel_share", "fail_share", "deadline", "max_rss_mib", "kill_grace")
              if getattr(options, name) != getattr(defaults, name)}
    config = LoadConfig(**{**asdict(base), **chosen, "limits": base.limits, "duration": base.duration})

    from twisted.internet.task import react

    result: List[LoadReport] = []

    def go(reactor_: Any) -> "Deferred[None]":
        d = Deferred.fromCoroutine(run_load(reactor_, config, keep=options.keep))
        return d.addCallback(result.append)

    print(f"load: {config.jobs} jobs, {config.queues} queues (limits {config.limits}), "
          f"1/3 streaming {config.packets} packets, {config.followers} followers "
          f"({config.slow_share:.0%} slow), {config.cancel_share:.0%} cancelled", flush=True)
    try:
        react(go)
    except SystemExit as e:
        if e.code not in (0, None):
            raise
    report = result[0]
    print(report.summary())
    if options.json:
        print(json.dumps(asdict(report)))
    return 1 if report.problems else 0


if __name__ == "__main__":
    sys.exit(main())
