"""Procedures of the benchmark's backend daemon (``twistd harpd --in-process``).

``echo(*args)`` returns its arguments as a list: the call round trip checks
that ``echo(i)`` comes back as ``[i]``.

``stream(count, size)`` yields ``count`` packets ``[n, "xxx..."]`` (``size``
characters of padding) and returns ``count``.  Run in-process, the daemon
produces packets as fast as it can encode them: the benchmark measures how
fast harp-proxy relays them, records them and fans them out.
"""
from txharp.daemon.procedures import procedure, streaming_procedure


@procedure
def echo(*args):
    return list(args)


@streaming_procedure
def stream(count, size=16):
    padding = "x" * size
    for n in range(count):
        yield [n, padding]
    return count
