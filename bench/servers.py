"""The processes a benchmark runs against: a TLS backend daemon and harp-proxy.

Everything listens on 127.0.0.1 only, in a temporary directory:

* a test PKI (:class:`txharp.testing.TestPKI`: root CA, intermediate,
  server certificate for ``localhost`` / ``127.0.0.1``);
* the backend: ``twistd -n harpd --in-process`` with :mod:`bench.procedures`
  (TLS, no child process per call: the "fast backend");
* harp-proxy: ``twistd -n harp-proxy`` with a hosts file naming the backend
  as host ``bench`` and the CA file to verify it with.

``python bench/servers.py fill DATA_DIR COUNT`` fills a job store with
``COUNT`` ended jobs (``synthetic-0`` ...) before a proxy is started on it.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from typing import Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)  # this checkout's txharp, as the servers use (see child_env)

#: The host name harp-proxy knows the backend by, and its credentials.
HOST = "bench"
USER, PASSWORD = "bench", "bench-secret"

_TWISTD = "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env() -> Dict[str, str]:
    """The environment of every server and load generator: this checkout first."""
    path = os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))
    return dict(os.environ, PYTHONPATH=path, PYTHONDONTWRITEBYTECODE="1")


def wait_listening(port: int, process: subprocess.Popen, log: str, timeout: float = 30.0) -> None:
    """Wait until something accepts on 127.0.0.1:``port`` (or the process died)."""
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"{log}: exited with status {process.returncode}:\n{_tail(log)}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"nothing listens on port {port} after {timeout} s:\n{_tail(log)}")
            time.sleep(0.05)


def _tail(path: str, lines: int = 30) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return ""


def stop(process: Optional[subprocess.Popen], timeout: float = 15.0) -> None:
    """SIGTERM (a clean twistd shutdown), then SIGKILL if it lingers."""
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def rss_kib(pid: int) -> Optional[int]:
    """Resident set size of a process, in KiB (Linux /proc)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def cpu_seconds(pid: int) -> Optional[float]:
    """User + system CPU time a process has used so far (Linux /proc)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


class Environment:
    """The PKI and the configuration files of one benchmark session."""

    def __init__(self, directory: str) -> None:
        from txharp.testing.certs import TestPKI

        self.directory = directory
        os.makedirs(directory, exist_ok=True)
        self.pki = TestPKI(os.path.join(directory, "pki"))
        self.backend_port = free_port()
        self.harpd_config = os.path.join(directory, "harpd.yaml")
        with open(self.harpd_config, "w") as f:
            f.write(
                "network:\n"
                "  address: 127.0.0.1\n"
                f"  port: {self.backend_port}\n"
                f"  certfile: {self.pki.chain_file}\n"
                f"  keyfile: {self.pki.key_file}\n"
                "authentication:\n"
                "  module: inconfig\n"
                f"  users: {{{USER}: \"plain:{PASSWORD}\"}}\n"
            )

    def write_hosts(self, backend: str) -> str:
        """A hosts file naming ``backend`` (HOST:PORT) as host :data:`HOST`."""
        address, _, port = backend.rpartition(":")
        path = os.path.join(self.directory, "hosts.jsonl")
        with open(path, "w") as f:
            f.write(json.dumps({
                "hostname": HOST, "address": address, "port": int(port),
                "credentials": {"user": USER, "password": PASSWORD},
            }) + "\n")
        return path

    def start_backend(self, in_process: bool = True) -> subprocess.Popen:
        """``twistd -n harpd`` on :attr:`backend_port`: ``--in-process`` (the fast
        backend) or, with ``in_process=False``, one child process per call as
        an operator runs it."""
        log = os.path.join(self.directory, "harpd.log")
        runner = ["--in-process"] if in_process else []
        process = subprocess.Popen(
            [sys.executable, "-c", _TWISTD, "-n", "--pidfile=", "--logfile", log,
             "harpd", *runner, "--max-calls", "256", "--max-waiting", "256",
             "--config", self.harpd_config,
             "--procedures", os.path.join(HERE, "procedures.py")],
            cwd=self.directory, env=child_env(), stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=open(log + ".stderr", "wb"),
        )
        wait_listening(self.backend_port, process, log)
        return process

    def start_proxy(self, port: int, data_dir: str, backend: str,
                    extra: List[str] = ()) -> subprocess.Popen:
        """``twistd -n harp-proxy`` on ``port`` with its store in ``data_dir``."""
        hosts = self.write_hosts(backend)
        log = os.path.join(self.directory, f"proxy-{port}.log")
        process = subprocess.Popen(
            [sys.executable, "-c", _TWISTD, "-n", "--pidfile=", "--logfile", log,
             "harp-proxy", "--listen", f"tcp:{port}:interface=127.0.0.1",
             "--hosts", hosts, "--data-dir", data_dir, "--ca-file", self.pki.ca_file,
             "--max-age", "0", *extra],
            cwd=self.directory, env=child_env(), stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=open(log + ".stderr", "wb"),
        )
        wait_listening(port, process, log)
        return process


def fill_store(data_dir: str, count: int) -> float:
    """Fill a new store in ``data_dir`` with ``count`` ended jobs; return the seconds taken."""
    started = time.monotonic()
    subprocess.run(
        [sys.executable, os.path.abspath(__file__), "fill", data_dir, str(count)],
        env=child_env(), check=True,
    )
    return time.monotonic() - started


def store_bytes(data_dir: str) -> int:
    """Bytes on disk of a job store (database, WAL and shared memory files)."""
    total = 0
    for name in os.listdir(data_dir):
        if name.startswith("jobs.sqlite3"):
            total += os.path.getsize(os.path.join(data_dir, name))
    return total


def _fill_main(data_dir: str, count: int) -> None:
    from twisted.internet import task

    from txharp.proxy.service import STORE_FILE
    from txharp.proxy.store import SQLiteJobStore

    async def fill(reactor) -> None:
        store = SQLiteJobStore(os.path.join(data_dir, STORE_FILE), reactor=reactor)
        await store.open()
        try:
            await store.fill_synthetic(count, int(time.time()))
        finally:
            await store.close()

    from twisted.internet.defer import Deferred

    task.react(lambda reactor: Deferred.fromCoroutine(fill(reactor)))


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "fill":
        _fill_main(sys.argv[2], int(sys.argv[3]))
    else:
        sys.exit("usage: servers.py fill DATA_DIR COUNT")
