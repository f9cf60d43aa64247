"""Top functions of a py-spy profile (``py-spy record --format raw``).

::

    py-spy record -p PID -r 500 -d 10 -f raw -o profile.txt
    python bench/profile_top.py profile.txt [--top 25]

Prints the functions with the most samples on top of the stack ("self")
and the ones present anywhere in the stack ("total"), as percentages of
all samples.  ``bench/run.py --profile DIR`` records and summarises a
profile of harp-proxy for every mode it runs.
"""
from __future__ import annotations

import argparse
import collections
import re
import sys
from typing import Dict, List, Tuple

_FRAME = re.compile(r"^(?P<function>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def _name(frame: str) -> str:
    """``function (path/to/module.py)`` with the path shortened to the package."""
    match = _FRAME.match(frame.strip())
    if not match:
        return frame.strip()
    path = match.group("file")
    for marker in ("site-packages/", "/work/main/", "lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{match.group('function')} ({path})"


def _thread(frame: str) -> str:
    """The thread a ``--threads`` stack belongs to: "main" or another name."""
    text = frame.strip().strip('"')
    if "MainThread" in text:
        return "main"
    return text


def summarise(
    path: str, thread: str = "all"
) -> Tuple[int, List[Tuple[str, int]], List[Tuple[str, int]]]:
    self_counts: Dict[str, int] = collections.Counter()
    total_counts: Dict[str, int] = collections.Counter()
    samples = 0
    with open(path, errors="replace") as f:
        for line in f:
            stack, _, count_text = line.rstrip("\n").rpartition(" ")
            if not stack or not count_text.isdigit():
                continue
            count = int(count_text)
            raw = [frame for frame in stack.split(";") if frame]
            # With --threads, py-spy puts the thread first, e.g.
            # "thread (0x7f...)" or "process 12:"; keep functions only.
            if raw and raw[0].startswith(("thread ", "process ")):
                if thread != "all" and (thread == "main") != ("MainThread" in raw[0]):
                    continue
                raw = raw[1:]
            frames = [_name(frame) for frame in raw]
            if not frames:
                continue
            samples += count
            self_counts[frames[-1]] += count
            for frame in set(frames):
                total_counts[frame] += count
    return (
        samples,
        collections.Counter(self_counts).most_common(),
        collections.Counter(total_counts).most_common(),
    )


def report(path: str, top: int = 25, thread: str = "all") -> str:
    samples, by_self, by_total = summarise(path, thread)
    if not samples:
        return f"{path}: no samples\n"
    out = [f"{path}: {samples} samples ({thread} threads)" if thread == "all" else
           f"{path}: {samples} samples (thread: {thread})", "", "  self%  function (top of stack)"]
    out += [f"  {100.0 * n / samples:5.1f}  {name}" for name, n in by_self[:top]]
    out += ["", " total%  function (anywhere in the stack)"]
    out += [f"  {100.0 * n / samples:5.1f}  {name}" for name, n in by_total[:top]]
    return "\n".join(out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("profile", nargs="+")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--thread", default="all",
                        help="'main' (the reactor), 'other', or 'all' [default]")
    args = parser.parse_args()
    for path in args.profile:
        sys.stdout.write(report(path, args.top, args.thread))


if __name__ == "__main__":
    main()
