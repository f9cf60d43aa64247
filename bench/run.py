#!/usr/bin/env python3
"""harp-proxy benchmarks: call round trips, stream relay, status lookups, overhead.

::

    python bench/run.py                          # everything, median of 3 runs
    python bench/run.py --modes calls,stream     # some modes only
    python bench/run.py --quick                  # tiny counts: does it work at all?
    python bench/run.py --dispatcher HOST:PORT   # measure another dispatcher
    python bench/run.py --profile prof/          # py-spy profile of harp-proxy per mode

What runs, all on 127.0.0.1 (see docs/performance.md):

* a backend daemon: ``twistd -n harpd --in-process`` with TLS and
  ``bench/procedures.py`` (or ``--backend HOST:PORT``);
* ``twistd -n harp-proxy`` with a fresh data directory and a hosts file
  naming the backend ``bench`` (or ``--dispatcher HOST:PORT``, which must
  know a host of that name, see ``--host``, serving ``echo`` and ``stream``);
* the load generator ``bench/loadgen.py``, a separate process per run.

Modes:

``calls``   call round trips (``echo([i])``, then ``get_result`` with wait),
            closed loop at each ``--concurrency``
``stream``  one job streaming ``--packets`` packets, followed live by each
            number of ``--followers``
``status``  ``get_status`` of random stored jobs, with each ``--stored``
            count of jobs put in the store before the proxy starts; proxy
            RSS and bytes on disk per job
``direct``  the same ``echo`` call sent straight to the backend over TLS,
            against the proxy's round trip at one client: the proxy's
            overhead at p50 and p99

Every reply is checked.  Figures are the median of ``--runs`` runs.  The
table goes to the terminal; one JSON object per measurement goes to
standard output with ``--json`` and to ``--out FILE`` (JSON lines).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import servers  # noqa: E402

LOADGEN = os.path.join(HERE, "loadgen.py")


def log(message: str) -> None:
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


def _csv_ints(text: str) -> List[int]:
    return [int(x) for x in text.split(",") if x]


def cpu_busy(seconds: float = 1.0) -> Optional[float]:
    """Share of all CPUs busy over ``seconds`` (Linux /proc/stat), or None."""

    def sample() -> Optional[List[int]]:
        try:
            with open("/proc/stat") as f:
                return [int(x) for x in f.readline().split()[1:]]
        except (OSError, ValueError):
            return None

    first = sample()
    time.sleep(seconds)
    second = sample()
    if first is None or second is None:
        return None
    delta = [b - a for a, b in zip(first, second)]
    total = sum(delta)
    idle = delta[3] + (delta[4] if len(delta) > 4 else 0)  # idle + iowait
    return (total - idle) / total if total else None


def machine() -> Dict[str, Any]:
    """What the figures were measured on."""
    info: Dict[str, Any] = {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu_model"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        import twisted
        import OpenSSL
        import ssl

        info["twisted"] = twisted.__version__
        info["pyopenssl"] = OpenSSL.__version__
        info["openssl"] = OpenSSL.SSL.SSLeay_version(OpenSSL.SSL.SSLEAY_VERSION).decode()
        info["python_ssl"] = ssl.OPENSSL_VERSION
    except Exception:  # pragma: no cover - informative only
        pass
    return info


class Profiler:
    """py-spy on the proxy while a measurement runs (``--profile DIR``)."""

    def __init__(self, directory: Optional[str], gil: bool = False) -> None:
        self.directory = directory
        #: --gil: sample only the thread holding the GIL (Python work; the
        #: default also counts time in C code that releases it, like OpenSSL).
        self.extra = ["--gil"] if gil else []
        self.py_spy = shutil.which("py-spy") or os.path.join(os.path.dirname(sys.executable), "py-spy")
        if directory:
            os.makedirs(directory, exist_ok=True)
            if not os.path.exists(self.py_spy):
                raise SystemExit("--profile needs py-spy: pip install py-spy")

    def start(self, pid: Optional[int], name: str) -> Optional[subprocess.Popen]:
        if not self.directory or pid is None:
            return None
        raw = os.path.join(self.directory, f"{name}.txt")
        process = subprocess.Popen(
            [self.py_spy, "record", "-p", str(pid), "-r", "400", "--threads", *self.extra, "-f", "raw", "-o", raw,
             "--nonblocking"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        time.sleep(0.3)
        return process

    def stop(self, process: Optional[subprocess.Popen], name: str) -> None:
        if process is None:
            return
        process.send_signal(2)  # SIGINT: py-spy writes what it has
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            return
        import profile_top

        raw = os.path.join(self.directory, f"{name}.txt")
        if os.path.exists(raw):
            with open(os.path.join(self.directory, f"{name}.top.txt"), "w") as f:
                f.write(profile_top.report(raw, 30))


class Bench:
    def __init__(self, args: argparse.Namespace, directory: str) -> None:
        self.args = args
        self.directory = directory
        self.env: Optional[servers.Environment] = None
        self.backend_process: Optional[subprocess.Popen] = None
        self.proxy_process: Optional[subprocess.Popen] = None  # the one being measured
        self.main_proxy: Optional[subprocess.Popen] = None  # for calls, stream and direct
        self._dispatcher = ""
        self.results: List[Dict[str, Any]] = []
        self.profiler = Profiler(args.profile, args.profile_gil)
        self.call_runs: Optional[List[Dict[str, Any]]] = None  # calls at 1 client

    # ------------------------------------------------------------ servers

    def environment(self) -> servers.Environment:
        if self.env is None:
            self.env = servers.Environment(os.path.join(self.directory, "env"))
        return self.env

    @property
    def backend(self) -> str:
        if self.args.backend:
            return self.args.backend
        if self.backend_process is None:
            in_process = not self.args.backend_processes
            log("starting the backend: twistd harpd "
                + ("--in-process (TLS)" if in_process else "(TLS, a child process per call)"))
            self.backend_process = self.environment().start_backend(in_process)
        return f"127.0.0.1:{self.environment().backend_port}"

    def start_proxy(self, data_dir: str) -> str:
        """Start a proxy on ``data_dir``; it is the one measured until :meth:`stop_proxy`."""
        port = servers.free_port()
        log(f"starting twistd harp-proxy on port {port}, data in {data_dir}")
        self.proxy_process = self.environment().start_proxy(
            port, data_dir, self.backend, self.args.proxy_arg
        )
        return f"127.0.0.1:{port}"

    def stop_proxy(self) -> None:
        """Stop the proxy being measured; the main one is measured again."""
        if self.proxy_process is not self.main_proxy:
            servers.stop(self.proxy_process)
        self.proxy_process = self.main_proxy

    @property
    def dispatcher(self) -> str:
        """The main dispatcher (started on first use), now the one measured."""
        if self.args.dispatcher:
            return self.args.dispatcher
        if self.main_proxy is None:
            self.proxy_process = None
            self._dispatcher = self.start_proxy(os.path.join(self.directory, "data"))
            self.main_proxy = self.proxy_process
        self.proxy_process = self.main_proxy
        return self._dispatcher

    def close(self) -> None:
        for process in (self.proxy_process, self.main_proxy, self.backend_process):
            servers.stop(process)

    # ------------------------------------------------------------ running

    def pids(self) -> Dict[str, int]:
        out = {}
        if self.proxy_process is not None:
            out["proxy"] = self.proxy_process.pid
        if self.backend_process is not None:
            out["backend"] = self.backend_process.pid
        return out

    def loadgen(self, name: str, run: int, argv: List[str]) -> Dict[str, Any]:
        """One run of the load generator, with the servers' CPU time around it."""
        pids = self.pids()
        busy = self.wait_for_quiet()
        load = os.getloadavg()[0]
        before = {k: servers.cpu_seconds(pid) for k, pid in pids.items()}
        profiling = self.profiler.start(pids.get("proxy"), name) if run == 0 else None
        started = time.monotonic()
        completed = subprocess.run(
            [sys.executable, LOADGEN, *argv], env=servers.child_env(),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            timeout=self.args.seconds * 4 + 300,
        )
        wall = time.monotonic() - started
        self.profiler.stop(profiling, name)
        if completed.returncode != 0:
            raise RuntimeError(f"load generator failed ({' '.join(argv)}):\n"
                               f"{completed.stderr.decode(errors='replace')}")
        result = json.loads(completed.stdout)
        for key, pid in pids.items():
            after = servers.cpu_seconds(pid)
            if before.get(key) is not None and after is not None:
                result[f"{key}_cpu_s"] = after - before[key]
        result["wall_s"] = wall
        result["loadavg_before"] = load
        if busy is not None:
            result["cpu_busy_before"] = busy
        return result

    def wait_for_quiet(self) -> Optional[float]:
        """With ``--quiet-wait``, wait until other work leaves the CPUs
        nearly idle (at most that many seconds); the busy share measured."""
        limit = self.args.quiet_wait
        if not limit:
            return None
        deadline = time.monotonic() + limit
        while True:
            busy = cpu_busy()
            if busy is None or busy <= self.args.quiet_busy or time.monotonic() > deadline:
                if busy is not None and busy > self.args.quiet_busy:
                    log(f"  note: CPUs {busy:.0%} busy before this run (waited {limit:g} s)")
                return busy

    def repeat(self, name: str, argv: List[str]) -> List[Dict[str, Any]]:
        runs = []
        for run in range(self.args.runs):
            result = self.loadgen(name, run, argv)
            runs.append(result)
            log(f"  {name} run {run + 1}/{self.args.runs}: {_short(result)}")
        return runs

    def record(self, result: Dict[str, Any]) -> None:
        result["target"] = {"dispatcher": self.args.dispatcher or "harp-proxy",
                            "backend": self.args.backend or "harpd --in-process"}
        self.results.append(result)
        if self.args.json:
            sys.stdout.write(json.dumps(result) + "\n")
            sys.stdout.flush()
        if self.args.out:
            with open(self.args.out, "a") as f:
                f.write(json.dumps(result) + "\n")

    def common(self) -> List[str]:
        a = self.args
        return ["--seconds", str(a.seconds), "--warmup", str(a.warmup), "--host", a.host]

    # -------------------------------------------------------------- modes

    def mode_calls(self) -> None:
        for concurrency in self.args.concurrency:
            runs = self.repeat(
                f"calls-c{concurrency}",
                ["calls", "--dispatcher", self.dispatcher, "--concurrency", str(concurrency),
                 *self.common()],
            )
            if concurrency == 1:
                self.call_runs = runs
            self.record(summary("calls", {"concurrency": concurrency}, runs))

    def mode_stream(self) -> None:
        a = self.args
        per: Dict[int, Dict[str, Any]] = {}
        for followers in a.followers:
            runs = self.repeat(
                f"stream-f{followers}",
                ["stream", "--dispatcher", self.dispatcher, "--followers", str(followers),
                 "--packets", str(a.packets), "--size", str(a.size), "--host", a.host],
            )
            result = summary("stream", {"followers": followers, "packets": a.packets,
                                        "packet_bytes": runs[0]["packet_bytes"]}, runs)
            per[followers] = result
            if followers != min(a.followers) and min(a.followers) in per:
                base = per[min(a.followers)]
                result["time_vs_%d_follower" % min(a.followers)] = result["seconds"] / base["seconds"]
            self.record(result)

    def mode_status(self) -> None:
        a = self.args
        if a.dispatcher:
            self._status_external()
            return
        for stored in a.stored:
            data_dir = os.path.join(self.directory, f"data-{stored}")
            log(f"filling a job store with {stored} jobs")
            fill_seconds = servers.fill_store(data_dir, stored)
            disk = servers.store_bytes(data_dir)
            self.proxy_process = None
            dispatcher = self.start_proxy(data_dir)
            try:
                pid = self.proxy_process.pid
                rss_start = servers.rss_kib(pid)
                runs = self.repeat(
                    f"status-{stored}",
                    ["status", "--dispatcher", dispatcher, "--jobs", str(stored),
                     "--concurrency", str(a.status_concurrency), *self.common()],
                )
                rss_end = servers.rss_kib(pid)
            finally:
                self.stop_proxy()
            self.record(summary("status", {
                "stored_jobs": stored, "concurrency": a.status_concurrency,
                "fill_seconds": fill_seconds, "store_bytes": disk,
                "bytes_per_job": disk / stored if stored else None,
                "proxy_rss_kib_start": rss_start, "proxy_rss_kib_end": rss_end,
            }, runs))

    def _status_external(self) -> None:
        """Another dispatcher: ask about jobs made by calls through it first."""
        a = self.args
        ids_file = os.path.join(self.directory, "job-ids.txt")
        count = min(a.stored) if a.stored else 1000
        log(f"submitting {count} calls to {a.dispatcher} to have jobs to ask about")
        sys.path.insert(0, HERE)
        import loadgen

        address = loadgen._address(a.dispatcher)
        with open(ids_file, "w") as f:
            for i in range(count):
                reply = loadgen._one(loadgen.blocking_request(address, loadgen._line(
                    {"harpcaller": 1, "host": a.host, "procedure": "echo", "arguments": [i],
                     "info": None})))
                f.write(reply["job_id"] + "\n")
        runs = self.repeat(
            "status-external",
            ["status", "--dispatcher", a.dispatcher, "--ids-file", ids_file,
             "--concurrency", str(a.status_concurrency), *self.common()],
        )
        self.record(summary("status", {"stored_jobs": count, "concurrency": a.status_concurrency}, runs))

    def mode_direct(self) -> None:
        a = self.args
        ca = a.ca_file or (None if a.backend else self.environment().pki.ca_file)
        arguments = ["direct", "--backend", self.backend, *self.common(),
                     *(["--ca-file", ca] if ca else [])]
        for concurrency in [c for c in a.concurrency if c > 1]:
            runs = self.repeat(f"direct-c{concurrency}",
                               [*arguments, "--concurrency", str(concurrency)])
            self.record(summary("direct", {"concurrency": concurrency}, runs))
        direct = self.repeat("direct", arguments)
        if self.call_runs is None:
            self.call_runs = self.repeat(
                "calls-c1",
                ["calls", "--dispatcher", self.dispatcher, "--concurrency", "1", *self.common()],
            )
        direct_summary = summary("direct", {"concurrency": 1}, direct)
        proxy_summary = summary("calls", {"concurrency": 1}, self.call_runs)
        d, p = direct_summary["latency_ms"], proxy_summary["latency_ms"]
        direct_summary["proxy_latency_ms"] = p
        direct_summary["overhead_ms"] = {k: p[k] - d[k] for k in ("p50", "p99")}
        self.record(direct_summary)


def _median(values: List[float]) -> Optional[float]:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def summary(mode: str, params: Dict[str, Any], runs: List[Dict[str, Any]]) -> Dict[str, Any]:
    """The median of the runs' figures, with every run kept under ``runs``."""
    out: Dict[str, Any] = {"mode": mode, **params, "runs": len(runs)}
    for key in ("rate", "seconds", "delivered_rate"):
        if key in runs[0]:
            out[key] = _median([r[key] for r in runs])
    if "latency_ms" in runs[0]:
        out["latency_ms"] = {
            k: _median([r["latency_ms"].get(k) for r in runs]) for k in ("p50", "p90", "p99", "max", "mean")
        }
    out["checked"] = sum(r.get("checked", 0) for r in runs)
    out["errors"] = sum(r.get("errors", 0) for r in runs)
    out["error_samples"] = [s for r in runs for s in r.get("error_samples", [])][:5]
    ops = [r.get("operations") or r.get("packets") for r in runs]
    for who in ("proxy", "backend", "client"):
        cpu = [r.get(f"{who}_cpu_s") for r in runs]
        if all(c is not None for c in cpu) and all(ops):
            unit = "ms_per_packet" if mode == "stream" else "ms_per_op"
            out[f"{who}_cpu_{unit}"] = _median([1000.0 * c / n for c, n in zip(cpu, ops)])
    out["max_loadavg_before"] = max(r.get("loadavg_before", 0.0) for r in runs)
    busy = [r["cpu_busy_before"] for r in runs if "cpu_busy_before" in r]
    if busy:
        out["max_cpu_busy_before"] = max(busy)
    out["all_runs"] = runs
    return out


def _ms(latency: Optional[Dict[str, Any]], key: str) -> str:
    """A latency percentile for the table; blank when no operation succeeded."""
    value = (latency or {}).get(key)
    return "" if value is None else f"{value:.2f}"


def _short(result: Dict[str, Any]) -> str:
    parts = [f"{result.get('rate', 0):,.0f}/s"]
    lat = result.get("latency_ms")
    if lat and lat.get("p50") is not None:
        parts.append(f"p50 {_ms(lat, 'p50')} ms p99 {_ms(lat, 'p99')} ms")
    parts.append(f"checked {result.get('checked')} errors {result.get('errors')}")
    return ", ".join(parts)


def table(results: List[Dict[str, Any]]) -> str:
    rows = [("measurement", "rate", "p50 ms", "p99 ms", "proxy CPU", "checked", "errors", "notes")]
    for r in results:
        lat = r.get("latency_ms") or {}
        cpu = r.get("proxy_cpu_ms_per_op") or r.get("proxy_cpu_ms_per_packet")
        cpu_text = "" if cpu is None else (
            f"{cpu * 1000:.1f} us/pkt" if "proxy_cpu_ms_per_packet" in r else f"{cpu:.2f} ms/op")
        notes = ""
        if r["mode"] == "calls":
            name = f"calls C={r['concurrency']}"
            rate = f"{r['rate']:,.0f} rt/s"
        elif r["mode"] == "stream":
            name = f"stream {r['followers']} follower(s)"
            rate = f"{r['rate']:,.0f} pkt/s"
            notes = f"{r['packets']} pkts, {r['seconds']:.2f} s"
            ratio = [v for k, v in r.items() if k.startswith("time_vs_")]
            if ratio:
                notes += f", {ratio[0]:.2f}x the time of 1"
        elif r["mode"] == "status":
            name = f"status {r['stored_jobs']:,} jobs C={r['concurrency']}"
            rate = f"{r['rate']:,.0f} /s"
            if r.get("bytes_per_job") is not None:
                notes = (f"{r['bytes_per_job']:.0f} B/job on disk, RSS "
                         f"{(r.get('proxy_rss_kib_end') or 0) / 1024:.0f} MiB")
        else:
            name = f"direct harpd call C={r['concurrency']}"
            rate = f"{r['rate']:,.0f} /s"
            over = r.get("overhead_ms")
            if over:
                notes = (f"proxy overhead p50 {over['p50']:+.2f} ms,"
                         f" p99 {over['p99']:+.2f} ms")
        rows.append((name, rate, _ms(lat, "p50"), _ms(lat, "p99"),
                     cpu_text, str(r["checked"]), str(r["errors"]), notes))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for n, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(w) if i in (0, 7) else cell.rjust(w)
                               for i, (cell, w) in enumerate(zip(row, widths))).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines) + "\n"


def plot(results: List[Dict[str, Any]], path: str) -> bool:
    """A small bar chart of the rates, if matplotlib is installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("--plot: matplotlib is not installed; no picture made")
        return False
    groups = [("calls", "call round trips/s", "concurrency", "C="),
              ("stream", "packets/s (per follower)", "followers", "F="),
              ("status", "get_status/s", "stored_jobs", "jobs=")]
    present = [g for g in groups if any(r["mode"] == g[0] for r in results)]
    if not present:
        return False
    fig, axes = plt.subplots(1, len(present), figsize=(4 * len(present), 3.2))
    if len(present) == 1:
        axes = [axes]
    for ax, (mode, title, key, prefix) in zip(axes, present):
        rows = [r for r in results if r["mode"] == mode]
        ax.bar([f"{prefix}{r[key]:,}" for r in rows], [r["rate"] for r in rows], color="#4a7ab0")
        ax.set_title(title, fontsize=10)
        ax.tick_params(labelsize=8)
    fig.suptitle("harp-proxy, median of runs", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return True


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        description="Benchmarks of harp-proxy (or any HarpCaller dispatcher).",
        epilog="See docs/performance.md for what each mode measures.",
    )
    parser.add_argument("--modes", default="calls,stream,status,direct",
                        help="comma-separated: calls, stream, status, direct [default: all]")
    parser.add_argument("--quick", action="store_true",
                        help="tiny counts and one run: a smoke test, not a measurement")
    parser.add_argument("--runs", type=int, help="runs per measurement; the median is reported [3]")
    parser.add_argument("--seconds", type=float, help="length of each closed-loop run [5]")
    parser.add_argument("--warmup", type=int, help="operations before each run, not counted [100]")
    parser.add_argument("--concurrency", type=_csv_ints, help="clients for calls [1,16,64]")
    parser.add_argument("--followers", type=_csv_ints, help="followers of a stream [1,10]")
    parser.add_argument("--packets", type=int, help="packets of the streamed job [200000]")
    parser.add_argument("--size", type=int, default=16, help="padding characters per packet [16]")
    parser.add_argument("--stored", type=_csv_ints, help="jobs in the store for status [10000,1000000]")
    parser.add_argument("--status-concurrency", type=int, default=16, help="clients for status [16]")
    parser.add_argument("--dispatcher", metavar="HOST:PORT",
                        help="measure this dispatcher instead of starting harp-proxy")
    parser.add_argument("--backend", metavar="HOST:PORT",
                        help="use this harpd instead of starting one (calls, stream and direct)")
    parser.add_argument("--ca-file", help="CA file to verify --backend in the direct mode")
    parser.add_argument("--backend-processes", action="store_true",
                        help="run the started harpd with a child process per call (as "
                             "deployed) instead of --in-process: measures harpd's own cost")
    parser.add_argument("--host", default=servers.HOST,
                        help="host name the dispatcher knows the backend by [bench]")
    parser.add_argument("--proxy-arg", action="append", default=[],
                        help="extra argument for twistd harp-proxy (repeatable)")
    parser.add_argument("--quiet-wait", type=float, default=0, metavar="SECONDS",
                        help="before each run, wait up to SECONDS for other work to leave the "
                             "CPUs nearly idle (see --quiet-busy) [0: do not wait]")
    parser.add_argument("--quiet-busy", type=float, default=0.15, metavar="SHARE",
                        help="what 'nearly idle' means for --quiet-wait: at most this share of "
                             "all CPUs busy over one second [0.15]")
    parser.add_argument("--out", help="append one JSON object per measurement to this file")
    parser.add_argument("--json", action="store_true", help="also print the JSON objects on stdout")
    parser.add_argument("--profile", metavar="DIR", help="record a py-spy profile of harp-proxy per measurement")
    parser.add_argument("--profile-gil", action="store_true",
                        help="with --profile: sample only the thread holding the GIL")
    parser.add_argument("--plot", metavar="PNG", help="draw the rates (needs matplotlib)")
    parser.add_argument("--keep", metavar="DIR", help="work in DIR and keep it (logs, stores)")
    args = parser.parse_args(argv)

    quick = args.quick
    defaults = dict(runs=1 if quick else 3, seconds=0.4 if quick else 5.0, warmup=5 if quick else 100,
                    concurrency=[1, 4] if quick else [1, 16, 64], followers=[1, 3] if quick else [1, 10],
                    packets=300 if quick else 200000, stored=[1000] if quick else [10000, 1000000])
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = set(modes) - {"calls", "stream", "status", "direct"}
    if unknown:
        parser.error(f"unknown modes: {', '.join(sorted(unknown))}")

    # SIGTERM stops the servers as Ctrl-C does (the finally clause below).
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    directory = args.keep or tempfile.mkdtemp(prefix="txharp-bench-")
    os.makedirs(directory, exist_ok=True)
    bench = Bench(args, directory)
    info = machine()
    log(f"txharp benchmarks in {directory}: {info.get('cpus')} CPUs ({info.get('cpu_model', '?')}),"
        f" Python {info['python']}, Twisted {info.get('twisted')}, {info.get('openssl')}")
    try:
        for mode in modes:
            getattr(bench, f"mode_{mode}")()
    finally:
        bench.close()
        if not args.keep:
            shutil.rmtree(directory, ignore_errors=True)
    if args.out:
        with open(args.out, "a") as f:
            f.write(json.dumps({"mode": "machine", **info}) + "\n")
    sys.stderr.write("\n" + table(bench.results))
    if args.plot and plot(bench.results, args.plot):
        log(f"plot written to {args.plot}")
    failed = sum(r["errors"] for r in bench.results)
    unchecked = [r for r in bench.results if not r["checked"]]
    if failed or unchecked:
        log(f"FAILED: {failed} replies were wrong, {len(unchecked)} measurements checked nothing")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
