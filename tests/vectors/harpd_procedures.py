"""Procedures for the daemon's end-to-end tests, written in the original
harpd's style (``from harpd.proc import ...``).

The first group reproduces the procedures the captures in
``original-wire.txt`` were recorded with; the second exists to test how
the daemon contains misbehaving calls.
"""
import logging
import os
import signal
import subprocess
import sys
import time

from harpd.proc import Result, StreamingProcedure, procedure, streaming_procedure


class TestFailure(Exception):
    pass


@procedure
def echo(*args):
    return list(args)


@procedure
def add(a, b):
    return a + b


@procedure
def fail():
    raise TestFailure("intentional failure")


@procedure
def fail_value():
    raise ValueError("bad value")


@streaming_procedure
def stream_n(n, delay=0):
    for i in range(n):
        if delay:
            time.sleep(delay)
        yield {"i": i}
    yield Result("done")


@streaming_procedure
def stream_fail(n):
    for i in range(n):
        yield {"i": i}
    raise RuntimeError("stream broke after %d packets" % n)


@streaming_procedure
def stream_noresult(n):
    for i in range(n):
        yield i


@procedure
def sleep(seconds):
    time.sleep(seconds)
    return True


@procedure(timeout=1)
def sleep_timeout1(seconds):
    time.sleep(seconds)
    return True


@procedure
def unserializable():
    return {1, 2}


# -- containment


@procedure
def hang(pid_file):
    """Write this process's pid, start a grandchild that writes its own pid
    next to it, then sleep for ever."""
    subprocess.Popen(
        [sys.executable, "-c",
         "import os, sys, time; open(sys.argv[1], 'w').write(str(os.getpid())); time.sleep(600)",
         pid_file + ".grandchild"]
    )
    with open(pid_file, "w") as f:
        f.write(str(os.getpid()))
    time.sleep(600)


@procedure(timeout=0.5)
def hang_with_timeout(pid_file):
    with open(pid_file, "w") as f:
        f.write(str(os.getpid()))
    time.sleep(600)


@procedure
def stubborn(pid_file):
    """Ignore SIGTERM: only SIGKILL ends this one."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    with open(pid_file, "w") as f:
        f.write(str(os.getpid()))
    time.sleep(600)


@procedure
def escape(pid_file):
    """Leave a process in a new session that holds the output pipes open."""
    subprocess.Popen(
        [sys.executable, "-c",
         "import os, sys, time; open(sys.argv[1], 'w').write(str(os.getpid())); time.sleep(600)",
         pid_file],
        start_new_session=True,
    )
    return "escaped"


@procedure
def crash():
    os._exit(7)


@procedure
def chatty():
    print("hello from stdout")
    sys.stderr.write("hello from stderr\n")
    return "said hello"


@procedure
def log_message(text):
    logging.getLogger("procedures").warning("%s", text)
    return True


@procedure
def identity():
    return {"uid": os.getuid(), "gid": os.getgid(), "groups": sorted(os.getgroups())}


@procedure(uid="nobody")
def identity_nobody():
    return {"uid": os.getuid(), "gid": os.getgid(),
            "env": [os.environ.get(name) for name in ("HOME", "USER", "LOGNAME")]}


@procedure
def module_name():
    return __name__


class Countdown(StreamingProcedure):
    """A subclass-style streaming procedure, as the original allowed."""

    def __init__(self):
        super().__init__(None)

    def __call__(self, n):
        self.left = n
        return iter(range(n, 0, -1))

    def result(self):
        return "liftoff"


countdown = Countdown()
