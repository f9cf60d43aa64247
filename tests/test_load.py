"""The load test at CI size (issue item 7); ``python bench/load.py`` runs it full size.

End-to-end over loopback: ``twistd -n harpd`` (txharp's daemon, a child
process per call) and ``twistd -n harp-proxy`` as subprocesses on
127.0.0.1, driven by txharp's client from this process.  The implementation
is :mod:`bench/load.py <bench.load>` (loaded from its file: ``bench`` is not
a package); see its docstring for the workload and what is checked.
"""
from __future__ import annotations

import importlib.util
import os
import sys
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase

_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench", "load.py")


def _load_bench() -> Any:
    name = "txharp_bench_load"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, _PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


load = _load_bench()


class LoadTests(TestCase):
    """End-to-end over loopback: the CI-size load run, every property checked."""

    timeout = 300

    def test_small_load(self) -> "Deferred[None]":
        config = load.CI

        async def run() -> None:
            report = await load.run_load(reactor, config, directory=os.path.abspath(self.mktemp()))
            print("\n" + report.summary())
            self.assertEqual(report.problems, [])
            self.assertEqual(report.jobs, config.jobs)
            self.assertEqual(sum(report.outcomes.values()), config.jobs)
            self.assertGreater(report.cancelled, 0, "no job was cancelled: cancels untested")
            self.assertGreater(report.outcomes.get("exception", 0), 0)
            self.assertEqual(report.followers, config.followers)
            self.assertGreater(report.slow_followers, 0)
            self.assertGreater(report.packets_followed, 0)
            self.assertEqual(len(report.max_concurrency), config.queues)
            # Queues with a limit above one really ran calls side by side.
            self.assertTrue(any(seen > 1 for seen, limit in report.max_concurrency.values()),
                            report.max_concurrency)
            self.assertGreater(report.proxy_peak_rss_kib, 0)

        return Deferred.fromCoroutine(run())
