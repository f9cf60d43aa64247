"""Example procedures for ``twistd harpd --procedures examples/procedures.py``.

Written against ``harpd.proc`` so the same file also runs under the original
harpd.  Each call runs in a child process of its own: a procedure may block,
sleep or crash without affecting the daemon or other calls.
"""
import os
import shutil
import socket
import time

from harpd.proc import Result, procedure, streaming_procedure


@procedure
def hostname():
    """The daemon host's name."""
    return socket.gethostname()


@procedure
def load():
    """Load averages over 1, 5 and 15 minutes."""
    return list(os.getloadavg())


@procedure
def disk_usage(path="/"):
    """Total, used and free bytes of the filesystem holding ``path``."""
    usage = shutil.disk_usage(path)
    return {"total": usage.total, "used": usage.used, "free": usage.free}


@procedure(timeout=30, uid="nobody")
def slow_echo(value, seconds=1):
    """Return ``value`` after ``seconds``, as user nobody, killed after 30 s."""
    time.sleep(seconds)
    return value


@streaming_procedure(timeout=120)
def countdown(start=5, interval=1):
    """Stream start, start-1, ... 1, then the result "liftoff"."""
    for n in range(start, 0, -1):
        yield {"n": n}
        time.sleep(interval)
    yield Result("liftoff")
