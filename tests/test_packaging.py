"""The installed distribution carries the twistd plugins and the type marker.

``twisted/plugins/`` has no ``__init__.py`` (it is a namespace shared by all
Twisted plugins), a classic way to ship a package without its plugins; these
tests look at what pip actually installed, from outside the source tree.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from importlib import metadata

from twisted.trial.unittest import SkipTest, TestCase

PLUGIN_FILES = {"twisted/plugins/txharp_proxy.py", "twisted/plugins/txharp_harpd.py"}


def _installed_files() -> set:
    try:
        files = metadata.files("txharp")
    except metadata.PackageNotFoundError:
        raise SkipTest("txharp is not installed (run through scripts/test.sh)")
    return {str(f).replace(os.sep, "/") for f in files or ()}


class PackagingTests(TestCase):
    def test_distribution_contains_plugins_and_py_typed(self) -> None:
        files = _installed_files()
        self.assertTrue(PLUGIN_FILES <= files, sorted(PLUGIN_FILES - files))
        self.assertIn("txharp/py.typed", files)
        self.assertNotIn("twisted/plugins/__init__.py", files)

    def test_twistd_lists_the_plugins(self) -> None:
        _installed_files()
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        with tempfile.TemporaryDirectory() as elsewhere:
            out = subprocess.run(
                [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "--help"],
                cwd=elsewhere,
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )
        self.assertIn("harp-proxy", out.stdout)
        self.assertIn("harpd", out.stdout)
