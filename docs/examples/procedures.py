"""Procedures for harpd, written as for the original daemon.

Run: twistd -n harpd --config harpd.yaml --procedures procedures.py
"""
from collections import deque

from harpd.proc import Result, procedure, streaming_procedure


@procedure
def uptime():
    """Seconds since the host booted."""
    with open("/proc/uptime") as f:
        return float(f.read().split()[0])


@procedure(timeout=10)  # killed, with a "timeout" error, after 10 seconds
def add(a, b):
    return a + b


@streaming_procedure
def tail_log(path, lines=10):
    """The last lines of a file, one packet each; the result is how many."""
    with open(path, errors="replace") as f:
        last = deque(f, maxlen=lines)
    for line in last:
        yield line.rstrip("\n")
    yield Result(len(last))
