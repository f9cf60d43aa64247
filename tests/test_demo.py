"""The quick-start demo, run as the README says (``python -m txharp.demo``)."""
from __future__ import annotations

import os
import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class DemoTests(SynchronousTestCase):
    """end-to-end over loopback: the demo starts harpd and harp-proxy, runs every
    step through them and stops them, in bounded time."""

    def test_demo(self) -> None:
        environment = dict(os.environ, PYTHONPATH=_ROOT)
        finished = subprocess.run(
            [sys.executable, "-m", "txharp.demo"],
            cwd=_ROOT,
            env=environment,
            capture_output=True,
            text=True,
            timeout=60,
        )
        out = finished.stdout
        self.assertEqual(finished.returncode, 0, out + finished.stderr)
        self.assertEqual(finished.stderr, "")
        for expected in (
            "harpd      listening on 127.0.0.1:",
            "harp-proxy listening on 127.0.0.1:",
            "   -> ['bar', 'baz']",
            '   packet 4: {"tick": 4}',
            "   job.result() -> 'stream done'",
            "args=[1, 'two'] info={'ticket': 42}",
            "the second has start_time() = None",
            "job.cancel() -> True; job.result() -> CALL_CANCELLED",
            "procedure raised: RemoteException('ValueError'",
            "unknown host: RemoteError('unknown_host'",
            "end: Result('stream done')",
            "state      ended",
            "harp-proxy stopped on SIGTERM",
            "harpd      stopped on SIGTERM",
            "all steps OK",
        ):
            self.assertIn(expected, out)
        self.assertNotIn("!!", out)
        directory = out.split("directory  ", 1)[1].split("\n", 1)[0]
        self.assertFalse(os.path.exists(directory), "the demo removes its directory")
