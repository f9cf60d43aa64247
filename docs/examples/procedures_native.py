"""The same kind of module with txharp's own import path.

Run: twistd -n harpd --config harpd.yaml --procedures procedures_native.py
"""
import os
import time

from txharp.daemon.procedures import procedure, streaming_procedure


@procedure
def whoami():
    """The identity the call runs as (see uid= and gid=)."""
    return {"uid": os.getuid(), "gid": os.getgid(), "pid": os.getpid()}


@streaming_procedure(timeout=60)
def countdown(start, pause=0.1):
    """Packets start, start-1, ..., 1; a Python 3 return value is the result."""
    for n in range(start, 0, -1):
        yield n
        time.sleep(pause)
    return "liftoff"
