"""The benchmark suite still runs: ``bench/run.py --quick`` on loopback.

Tiny counts, one run per measurement, every mode.  What is checked is the
output's shape and that every reply was checked and right — never a
speed: figures from a shared test machine mean nothing.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

from twisted.trial.unittest import SynchronousTestCase

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN = os.path.join(ROOT, "bench", "run.py")


class BenchSmokeTests(SynchronousTestCase):
    def test_quick_run_of_every_mode(self) -> None:
        directory = tempfile.mkdtemp(prefix="txharp-bench-smoke-")
        out = os.path.join(directory, "results.jsonl")
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
        completed = subprocess.run(
            [sys.executable, RUN, "--quick", "--json", "--out", out,
             "--keep", os.path.join(directory, "work")],
            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            timeout=120,
        )
        stderr = completed.stderr.decode(errors="replace")
        self.assertEqual(completed.returncode, 0, stderr[-3000:])

        printed = [json.loads(line) for line in completed.stdout.decode().splitlines()]
        with open(out) as f:
            written = [json.loads(line) for line in f]
        machine = [r for r in written if r["mode"] == "machine"]
        results = [r for r in written if r["mode"] != "machine"]
        self.assertEqual(len(machine), 1)
        self.assertIn("python", machine[0])
        self.assertEqual(printed, results)

        by_mode = {}
        for r in results:
            by_mode.setdefault(r["mode"], []).append(r)
        self.assertEqual(sorted(by_mode), ["calls", "direct", "status", "stream"])
        self.assertEqual([r["concurrency"] for r in by_mode["calls"]], [1, 4])
        self.assertEqual([r["followers"] for r in by_mode["stream"]], [1, 3])

        for r in results:
            self.assertEqual(r["errors"], 0, r)
            self.assertGreater(r["checked"], 0, r)
            self.assertGreater(r["rate"], 0, r)
            self.assertEqual(r["runs"], 1)
            self.assertEqual(len(r["all_runs"]), 1)
            if r["mode"] != "stream":
                latency = r["latency_ms"]
                self.assertLessEqual(latency["p50"], latency["p99"])
                self.assertLessEqual(latency["p99"], latency["max"])
        # Each stream follower got every packet and the end, checked.
        for r in by_mode["stream"]:
            self.assertEqual(r["checked"], r["followers"])
        status = by_mode["status"][0]
        self.assertEqual(status["stored_jobs"], 1000)
        self.assertGreater(status["bytes_per_job"], 0)
        self.assertGreater(status["proxy_rss_kib_end"], 0)
        direct = {r["concurrency"]: r for r in by_mode["direct"]}
        self.assertEqual(set(direct), {1, 4})
        self.assertEqual(set(direct[1]["overhead_ms"]), {"p50", "p99"})
        # The table is printed for people.
        self.assertIn("measurement", stderr)
        self.assertIn("calls C=1", stderr)

    def test_store_benchmark(self) -> None:
        """``bench/store.py`` with tiny counts: every write is committed and counted."""
        completed = subprocess.run(
            [sys.executable, os.path.join(ROOT, "bench", "store.py"),
             "--jobs", "200", "--packets", "300", "--sequential", "20"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=120,
        )
        self.assertEqual(completed.returncode, 0, completed.stderr.decode(errors="replace")[-3000:])
        lines = completed.stdout.decode().splitlines()
        self.assertEqual([line.split()[0] for line in lines], ["create+end", "append", "one"])
        self.assertIn(" 200 jobs", lines[0])
        self.assertIn(" 300 packets", lines[1])


class TableTests(SynchronousTestCase):
    def test_measurement_where_every_reply_failed(self) -> None:
        """A run whose every operation failed has no latency: the table still
        prints (blank percentiles) so the suite can report the failure."""
        import importlib.util

        spec = importlib.util.spec_from_file_location("bench_run", RUN)
        assert spec is not None and spec.loader is not None
        run = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(run)
        text = run.table([{
            "mode": "calls", "concurrency": 1, "rate": 0.0, "checked": 0, "errors": 12,
            "latency_ms": {"p50": None, "p90": None, "p99": None, "max": None, "mean": None},
        }])
        [row] = [line for line in text.splitlines() if line.startswith("calls C=1")]
        self.assertEqual(row.split(), ["calls", "C=1", "0", "rt/s", "0", "12"])
