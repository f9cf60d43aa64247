"""The benchmark's load generator: one process, raw sockets, every reply checked.

Run by ``bench/run.py`` (one process per measurement), or by hand::

    python bench/loadgen.py calls  --dispatcher 127.0.0.1:3502 --concurrency 16 --seconds 5
    python bench/loadgen.py status --dispatcher 127.0.0.1:3502 --jobs 1000000 --seconds 5
    python bench/loadgen.py stream --dispatcher 127.0.0.1:3502 --followers 10 --packets 200000
    python bench/loadgen.py direct --backend 127.0.0.1:4306 --ca-file ca.pem --seconds 5

It prints one JSON object on standard output.  Nothing here imports
txharp or Twisted: the client side is plain ``socket``/``asyncio``/``ssl``,
so that the figures measure the server, not a heavy client.  With one
client (``--concurrency 1``) requests use blocking sockets, which add the
least latency; with more, one asyncio loop drives them all.

Definitions:

* **call round trip**: connect, send ``{"harpcaller": 1, "host": H,
  "procedure": "echo", "arguments": [i], "info": null}``, read the job ID,
  close; connect, send ``get_result`` with ``"wait": true``, read
  ``{"result": [i]}`` (checked), close.
* **status lookup**: connect, ``get_status`` of a random stored job, read
  and check the reply, close.
* **stream**: call ``stream(N, size)``; F followers ``follow_stream`` it
  from packet 0; the time runs from the call until the last follower has
  read the end line.  Every packet is checked (number and data) after the
  clock has stopped.
* **direct**: the same ``echo([i])`` call sent straight to the backend
  harpd over TLS (acknowledgement and result checked), with a full
  handshake per call, or resuming the TLS session (``--resume``).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import random
import resource
import socket
import ssl
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

perf = time.perf_counter


def _address(text: str) -> Tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def percentiles(latencies: List[float]) -> Dict[str, float]:
    """p50/p90/p99/max/mean in milliseconds (nearest-rank)."""
    if not latencies:
        return {}
    ordered = sorted(latencies)

    def rank(p: float) -> float:
        index = min(len(ordered) - 1, max(0, int(round(p / 100.0 * len(ordered) + 0.5)) - 1))
        return ordered[index] * 1000.0

    return {
        "p50": rank(50), "p90": rank(90), "p99": rank(99),
        "max": ordered[-1] * 1000.0, "mean": sum(ordered) / len(ordered) * 1000.0,
    }


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Failed(Exception):
    """A reply that is not the one expected."""


# ----------------------------------------------------------------- clients


def blocking_request(address: Tuple[str, int], line: bytes, timeout: float = 30.0) -> bytes:
    """Send one request line, read until the server closes."""
    with socket.create_connection(address, timeout=timeout) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.sendall(line)
        chunks = []
        while True:
            data = s.recv(65536)
            if not data:
                return b"".join(chunks)
            chunks.append(data)


class _OneShot(asyncio.Protocol):
    """Send one line, collect everything until the server closes."""

    def __init__(self, line: bytes, done: "asyncio.Future[bytes]", on_close: Optional[Callable[[], None]] = None) -> None:
        self.line = line
        self.done = done
        self.chunks: List[bytes] = []
        self.on_close = on_close

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.write(self.line)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        self.chunks.append(data)

    def eof_received(self) -> bool:
        if self.on_close is not None:
            self.on_close()
        return False

    def connection_lost(self, exc: Optional[BaseException]) -> None:
        if self.done.done():
            return
        if exc is None:
            self.done.set_result(b"".join(self.chunks))
        else:
            self.done.set_exception(exc)


async def async_request(address: Tuple[str, int], line: bytes,
                        on_close: Optional[Callable[[], None]] = None) -> bytes:
    loop = asyncio.get_running_loop()
    done: asyncio.Future[bytes] = loop.create_future()
    await loop.create_connection(lambda: _OneShot(line, done, on_close), *address)
    return await asyncio.wait_for(done, 60)


def _line(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode() + b"\n"


def _one(reply: bytes) -> Any:
    """The single JSON line of a reply."""
    if not reply.endswith(b"\n") or reply.count(b"\n") != 1:
        raise Failed(f"expected one line, got {reply[:200]!r}")
    return json.loads(reply)


# -------------------------------------------------------------- the modes


class Recorder:
    """Latencies, counts and the first few errors of one measurement."""

    def __init__(self) -> None:
        self.latencies: List[float] = []
        self.errors = 0
        self.samples: List[str] = []

    def error(self, e: BaseException) -> None:
        self.errors += 1
        if len(self.samples) < 5:
            self.samples.append(f"{type(e).__name__}: {e}"[:300])


def call_round_trip(dispatcher: Tuple[str, int], host: str, i: int) -> None:
    call = _line({"harpcaller": 1, "host": host, "procedure": "echo", "arguments": [i], "info": None})
    accepted = _one(blocking_request(dispatcher, call))
    job = accepted.get("job_id") if isinstance(accepted, dict) else None
    if not isinstance(job, str):
        raise Failed(f"call not accepted: {accepted!r}")
    result = _one(blocking_request(dispatcher, _line({"harpcaller": 1, "get_result": job, "wait": True})))
    if result != {"result": [i]}:
        raise Failed(f"job {job}: expected {{'result': [{i}]}}, got {result!r}")


async def async_call_round_trip(dispatcher: Tuple[str, int], host: str, i: int) -> None:
    call = _line({"harpcaller": 1, "host": host, "procedure": "echo", "arguments": [i], "info": None})
    accepted = _one(await async_request(dispatcher, call))
    job = accepted.get("job_id") if isinstance(accepted, dict) else None
    if not isinstance(job, str):
        raise Failed(f"call not accepted: {accepted!r}")
    reply = await async_request(dispatcher, _line({"harpcaller": 1, "get_result": job, "wait": True}))
    result = _one(reply)
    if result != {"result": [i]}:
        raise Failed(f"job {job}: expected {{'result': [{i}]}}, got {result!r}")


def check_status(reply: bytes, job: str, synthetic: bool, host: str) -> None:
    status = _one(reply)
    try:
        call, times = status["call"], status["time"]
        ok = call["host"] == host
        if synthetic:
            ok = ok and call["procedure"] == "noop" and call["arguments"] == [] \
                and times["end"] - times["submit"] == 1 and status["info"] is None
    except (KeyError, TypeError):
        ok = False
    if not ok:
        raise Failed(f"unexpected status of {job}: {status!r}")


def run_closed_loop(
    concurrency: int, seconds: float, count: Optional[int], warmup: int,
    blocking_op: Callable[[int], None], async_op: Callable[[int], Any],
) -> Dict[str, Any]:
    """``concurrency`` clients each doing one operation after another.

    Runs ``warmup`` operations first (not counted), then until ``seconds``
    have passed or ``count`` operations have been started.
    """
    recorder = Recorder()
    limit = count if count is not None else 1 << 62
    if concurrency == 1:
        for i in range(warmup):
            try:
                blocking_op(-1 - i)
            except Exception as e:
                recorder.error(e)
        recorder.errors, recorder.samples = 0, []
        cpu0, start = _cpu(), perf()
        deadline = start + seconds
        i = 0
        while i < limit and perf() < deadline:
            t0 = perf()
            try:
                blocking_op(i)
            except Exception as e:
                recorder.error(e)
            else:
                recorder.latencies.append(perf() - t0)
            i += 1
        elapsed = perf() - start
    else:
        async def main() -> Tuple[float, float]:
            counter = iter(range(1 << 62))

            async def warm() -> None:
                for _ in range(max(1, warmup // concurrency)):
                    try:
                        await async_op(-1 - next(counter))
                    except Exception as e:
                        recorder.error(e)

            await asyncio.gather(*(warm() for _ in range(concurrency)))
            recorder.errors, recorder.samples = 0, []
            started = [0]
            cpu0, start = _cpu(), perf()
            deadline = start + seconds

            async def worker(w: int) -> None:
                while started[0] < limit and perf() < deadline:
                    i = started[0]
                    started[0] += 1
                    t0 = perf()
                    try:
                        await async_op(i)
                    except Exception as e:
                        recorder.error(e)
                    else:
                        recorder.latencies.append(perf() - t0)

            await asyncio.gather(*(worker(w) for w in range(concurrency)))
            return cpu0, start

        cpu0, start = asyncio.run(main())
        elapsed = perf() - start
    done = len(recorder.latencies)
    return {
        "operations": done,
        "checked": done,
        "errors": recorder.errors,
        "error_samples": recorder.samples,
        "seconds": elapsed,
        "rate": done / elapsed if elapsed > 0 else 0.0,
        "latency_ms": percentiles(recorder.latencies),
        "client_cpu_s": _cpu() - cpu0,
    }


def mode_calls(args: argparse.Namespace) -> Dict[str, Any]:
    dispatcher = _address(args.dispatcher)
    result = run_closed_loop(
        args.concurrency, args.seconds, args.count, args.warmup,
        lambda i: call_round_trip(dispatcher, args.host, i),
        lambda i: async_call_round_trip(dispatcher, args.host, i),
    )
    result.update(mode="calls", concurrency=args.concurrency)
    return result


def mode_status(args: argparse.Namespace) -> Dict[str, Any]:
    dispatcher = _address(args.dispatcher)
    if args.ids_file:
        with open(args.ids_file) as f:
            ids = [line.strip() for line in f if line.strip()]
        pick = lambda: random.choice(ids)  # noqa: E731
        synthetic = False
    else:
        jobs = args.jobs
        pick = lambda: f"synthetic-{random.randrange(jobs)}"  # noqa: E731
        synthetic = True

    def blocking(i: int) -> None:
        job = pick()
        check_status(blocking_request(dispatcher, _line({"harpcaller": 1, "get_status": job})),
                     job, synthetic, args.host)

    async def concurrent(i: int) -> None:
        job = pick()
        check_status(await async_request(dispatcher, _line({"harpcaller": 1, "get_status": job})),
                     job, synthetic, args.host)

    result = run_closed_loop(args.concurrency, args.seconds, args.count, args.warmup, blocking, concurrent)
    result.update(mode="status", concurrency=args.concurrency)
    return result


def _check_stream(reply: bytes, packets: int, size: int, expected: bytes) -> None:
    """Every packet in order with its data, then ``{"result": packets}``."""
    if reply == expected:
        return  # byte for byte the compact form: nothing more to check
    lines = reply.split(b"\n")
    if lines[-1] != b"":
        raise Failed("stream reply does not end with a newline")
    lines.pop()
    if len(lines) != packets + 1:
        raise Failed(f"expected {packets + 1} lines, got {len(lines)}: ...{reply[-200:]!r}")
    padding = "x" * size
    for n, line in enumerate(lines[:-1]):
        value = json.loads(line)
        if value != {"packet": n, "data": [n, padding]}:
            raise Failed(f"line {n}: {line[:200]!r}")
    end = json.loads(lines[-1])
    if end != {"result": packets}:
        raise Failed(f"stream ended with {end!r}")


def mode_stream(args: argparse.Namespace) -> Dict[str, Any]:
    dispatcher = _address(args.dispatcher)
    padding = "x" * args.size
    expected = b"".join(
        b'{"packet":%d,"data":[%d,"%s"]}\n' % (n, n, padding.encode()) for n in range(args.packets)
    ) + b'{"result":%d}\n' % args.packets

    async def main() -> Dict[str, Any]:
        cpu0 = _cpu()
        start = perf()
        call = _line({"harpcaller": 1, "host": args.host, "procedure": "stream",
                      "arguments": [args.packets, args.size], "info": None})
        accepted = _one(await async_request(dispatcher, call))
        job = accepted["job_id"]
        ends: List[float] = []
        follow = _line({"harpcaller": 1, "follow_stream": job, "since": 0})
        replies = await asyncio.gather(*(
            async_request(dispatcher, follow, lambda: ends.append(perf()))
            for _ in range(args.followers)
        ))
        elapsed = (max(ends) if len(ends) == len(replies) else perf()) - start
        cpu = _cpu() - cpu0
        errors, samples = 0, []
        for reply in replies:
            try:
                _check_stream(reply, args.packets, args.size, expected)
            except Exception as e:
                errors += 1
                samples.append(f"{type(e).__name__}: {e}"[:300])
        return {
            "mode": "stream",
            "followers": args.followers,
            "packets": args.packets,
            "packet_bytes": len(b'{"packet":%d,"data":[%d,"%s"]}\n' % (args.packets // 2, args.packets // 2, padding.encode())),
            "seconds": elapsed,
            "rate": args.packets / elapsed,
            "delivered_rate": args.packets * args.followers / elapsed,
            "checked": args.followers - errors,
            "errors": errors,
            "error_samples": samples[:5],
            "client_cpu_s": cpu,
        }

    return asyncio.run(main())


def mode_direct(args: argparse.Namespace) -> Dict[str, Any]:
    backend = _address(args.backend)
    context = ssl.create_default_context(cafile=args.ca_file) if args.ca_file else ssl._create_unverified_context()
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    server_name = args.server_name or backend[0]
    session: List[Optional[ssl.SSLSession]] = [None]

    def request(i: int) -> bytes:
        return _line({"harp": 1, "procedure": "echo", "arguments": [i],
                      "auth": {"user": args.user, "password": args.password}})

    def check(i: int, data: bytes) -> None:
        lines = data.splitlines()
        if len(lines) != 2:
            raise Failed(f"expected 2 lines, got {lines!r}")
        ack, result = json.loads(lines[0]), json.loads(lines[1])
        if ack != {"harp": 1, "stream_result": False} or result != {"result": [i]}:
            raise Failed(f"unexpected reply {lines!r}")

    async def call_async(i: int) -> None:
        reader, writer = await asyncio.open_connection(
            *backend, ssl=context, server_hostname=server_name)
        try:
            writer.write(request(i))
            data = await reader.read(-1)
        finally:
            writer.close()
        check(i, data)

    def call(i: int) -> None:
        with socket.create_connection(backend, timeout=30) as raw:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with context.wrap_socket(raw, server_hostname=server_name,
                                     session=session[0] if args.resume else None) as s:
                s.sendall(request(i))
                chunks = []
                while True:
                    try:
                        data = s.recv(65536)
                    except (ssl.SSLEOFError, ConnectionResetError):
                        data = b""
                    if not data:
                        break
                    chunks.append(data)
                if args.resume:
                    session[0] = s.session
        check(i, b"".join(chunks))

    result = run_closed_loop(args.concurrency, args.seconds, args.count, args.warmup, call, call_async)
    result.update(mode="direct", concurrency=args.concurrency, resume=args.resume)
    return result


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="mode", required=True)

    def common(p: argparse.ArgumentParser, target: str) -> None:
        p.add_argument(f"--{target}", required=True, help="HOST:PORT")
        p.add_argument("--host", default="bench", help="host name the dispatcher knows the backend by")
        p.add_argument("--seconds", type=float, default=5.0, help="length of the measurement")
        p.add_argument("--count", type=int, default=None, help="stop after this many operations")
        p.add_argument("--warmup", type=int, default=50, help="operations run first, not counted")

    p = sub.add_parser("calls")
    common(p, "dispatcher")
    p.add_argument("--concurrency", type=int, default=1)
    p = sub.add_parser("status")
    common(p, "dispatcher")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--jobs", type=int, default=10000, help="synthetic jobs stored (synthetic-0 ...)")
    p.add_argument("--ids-file", help="job IDs to ask about, one a line (instead of synthetic jobs)")
    p = sub.add_parser("stream")
    common(p, "dispatcher")
    p.add_argument("--followers", type=int, default=1)
    p.add_argument("--packets", type=int, default=200000)
    p.add_argument("--size", type=int, default=16, help="characters of padding per packet")
    p = sub.add_parser("direct")
    common(p, "backend")
    p.add_argument("--ca-file")
    p.add_argument("--server-name", help="name checked in the certificate [default: the address]")
    p.add_argument("--user", default="bench")
    p.add_argument("--password", default="bench-secret")
    p.add_argument("--resume", action="store_true", help="resume the TLS session")
    p.add_argument("--concurrency", type=int, default=1,
                   help="clients (above 1: asyncio, no TLS session resumption)")
    args = parser.parse_args(argv)
    result = {"calls": mode_calls, "status": mode_status, "stream": mode_stream,
              "direct": mode_direct}[args.mode](args)
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
