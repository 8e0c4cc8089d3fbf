"""An open-loop HTTP/1.1 load generator on asyncio streams, for the intake scenarios.

Requests are scheduled at a fixed rate whatever the server does (open loop): a request
whose connection is still busy waits in a client-side queue, and its latency counts from
the moment it was *scheduled*, not sent, so a server that falls behind shows it in full
(no "coordinated omission"). Connections are kept alive, as webhook senders keep them.

It speaks just enough HTTP/1.1 (a ``Content-Length`` body, a ``Content-Length`` or
chunked reply) to cost a few tens of microseconds per request: httpx's client costs
about ten times that, which on a shared 2-core machine would measure the client.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

Request = tuple[str, str, bytes]  # method, path, body


@dataclass(slots=True)
class Outcome:
    """What a load run saw; times are seconds on ``time.perf_counter``."""

    scheduled: int = 0
    latencies: list[float] = field(default_factory=list)  # of every answered request
    statuses: dict[int, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)  # transport errors
    started: float = 0.0
    finished: float = 0.0
    accepted: list[int] = field(default_factory=list)  # indexes of 2xx requests

    @property
    def seconds(self) -> float:
        return self.finished - self.started

    @property
    def server_errors(self) -> int:
        return sum(n for status, n in self.statuses.items() if status >= 500)

    def percentile(self, pct: float) -> float:
        values = sorted(self.latencies)
        if not values:
            return float("nan")
        index = min(len(values) - 1, max(0, round(pct / 100 * len(values) + 0.5) - 1))
        return values[index]

    def summary(self) -> dict[str, float | int]:
        ok = len(self.accepted)
        return {
            "scheduled": self.scheduled,
            "accepted": ok,
            "accepted_per_s": ok / self.seconds if self.seconds > 0 else 0.0,
            "seconds": self.seconds,
            "p50_ms": 1000 * self.percentile(50),
            "p99_ms": 1000 * self.percentile(99),
            "max_ms": 1000 * max(self.latencies, default=float("nan")),
            "mean_ms": 1000 * statistics.fmean(self.latencies) if self.latencies else 0.0,
            "server_errors": self.server_errors,
            "other_status": sum(
                n for s, n in self.statuses.items() if not 200 <= s < 300 and s < 500
            ),
            "transport_errors": len(self.failures),
        }


def encode(host: str, port: int, request: Request, headers: dict[str, str]) -> bytes:
    method, path, body = request
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


async def _read_reply(reader: asyncio.StreamReader) -> int:
    status_line = await reader.readline()
    if not status_line:
        raise ConnectionError("connection closed by the server")
    status = int(status_line.split(b" ", 2)[1])
    length = 0
    chunked = False
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value.strip())
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    if chunked:
        while True:
            size = int((await reader.readline()).split(b";", 1)[0].strip(), 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    elif length:
        await reader.readexactly(length)
    return status


async def run(
    *,
    host: str,
    port: int,
    requests: Sequence[Request],
    rate: float,
    connections: int,
    headers: dict[str, str] | None = None,
    before: Callable[[int], None] | None = None,
    timeout: float = 60.0,
) -> Outcome:
    """Send ``requests`` in order at ``rate`` per second over ``connections`` keep-alive
    connections; ``before(i)`` runs just before request ``i`` is scheduled (e.g. to note
    its time). Waits for every answer (each bounded by ``timeout``)."""
    head = {"Connection": "keep-alive", **(headers or {})}
    wire = [encode(host, port, r, head) for r in requests]
    queue: asyncio.Queue[tuple[int, float] | None] = asyncio.Queue()
    outcome = Outcome(scheduled=len(wire))

    async def connection() -> None:
        reader: asyncio.StreamReader | None = None
        writer: asyncio.StreamWriter | None = None
        try:
            while True:
                item = await queue.get()
                if item is None:
                    return
                index, scheduled = item
                try:
                    if writer is None:
                        reader, writer = await asyncio.open_connection(host, port)
                    assert reader is not None
                    writer.write(wire[index])
                    status = await asyncio.wait_for(_read_reply(reader), timeout)
                except (OSError, ConnectionError, asyncio.IncompleteReadError, TimeoutError) as exc:
                    outcome.failures.append(f"{type(exc).__name__}: {exc}")
                    if writer is not None:
                        writer.close()
                    reader = writer = None
                    continue
                outcome.latencies.append(time.perf_counter() - scheduled)
                outcome.statuses[status] = outcome.statuses.get(status, 0) + 1
                if 200 <= status < 300:
                    outcome.accepted.append(index)
        finally:
            if writer is not None:
                writer.close()

    workers = [asyncio.create_task(connection()) for _ in range(connections)]
    start = time.perf_counter()
    outcome.started = start
    for index in range(len(wire)):
        due = start + index / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        if before is not None:
            before(index)
        queue.put_nowait((index, due))
    for _ in workers:
        queue.put_nowait(None)
    await asyncio.gather(*workers)
    outcome.finished = time.perf_counter()
    return outcome
