"""bench_overload's load: open loop at a fixed arrival rate, and what one level of it gives.

Open loop: request i is due at i / rate after the level starts and is sent then, whether or not
the earlier ones were answered, as a PACS router or many viewers send; a closed loop (C clients
each waiting for its answer) slows down with the server and can never offer more than it
answers. Times are from the moment a request was sent to its whole answer read; how late the
client sent it (its own event loop busy on the same cores) is kept apart, as `late`.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass

from common import summary_ms

SHED = 503


@dataclass(frozen=True)
class Answer:
    """One request of an open-loop level: when it was due, how late it went, what came back."""

    due_s: float  # after the level's start
    late_s: float  # sent this long after it was due
    seconds: float  # from sending to the whole answer read
    status: int | str  # HTTP status, or the client error's name (nothing answered)
    retry_after: str | None


async def open_loop(url: str, bodies: list[bytes], rate: float, seconds: float, timeout: float) -> list[Answer]:
    """`rate` POST /v1/predict a second for `seconds`, each sent when due; every answer awaited."""
    import aiohttp

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                     timeout=aiohttp.ClientTimeout(total=timeout)) as http:
        start = time.perf_counter() + 0.1  # every request scheduled before the first is due

        async def one(i: int) -> Answer:
            due = i / rate
            await asyncio.sleep(max(0.0, start + due - time.perf_counter()))
            sent = time.perf_counter()
            retry_after = None
            try:
                async with http.post(f"{url}/v1/predict", data=bodies[i % len(bodies)],
                                     headers={"Content-Type": "image/png"}) as response:
                    await response.read()
                    status, retry_after = response.status, response.headers.get("Retry-After")
            except (aiohttp.ClientError, asyncio.TimeoutError) as err:
                status = type(err).__name__
            return Answer(due, sent - start - due, time.perf_counter() - sent, status, retry_after)

        return list(await asyncio.gather(*(one(i) for i in range(int(rate * seconds)))))


def level_summary(answers: list[Answer], rate: float, warmup: float, duration: float) -> dict:
    """The requests due after the warm-up: goodput, answered (200) and shed (503) times, the
    share shed, every other outcome by status, and whether each 503 said when to retry."""
    recorded = [a for a in answers if a.due_s >= warmup]
    ok = [a for a in recorded if a.status == 200]
    shed = [a for a in recorded if a.status == SHED]
    other = Counter(str(a.status) for a in recorded if a.status not in (200, SHED))
    retry = [a.retry_after for a in shed]
    with_retry_after = sum(1 for value in retry if value is not None and value.isdigit() and int(value) >= 1)
    return {
        "offered_per_s": rate, "duration_s": duration, "requests": len(recorded),
        "ok": len(ok), "goodput_per_s": len(ok) / duration, "answered": summary_ms([a.seconds for a in ok]),
        "shed": len(shed), "shed_share": len(shed) / len(recorded) if recorded else float("nan"),
        "time_to_503": summary_ms([a.seconds for a in shed]),
        "shed_over_100ms": sum(1 for a in shed if a.seconds > 0.1),
        "other": dict(other), "retry_after_on_every_503": with_retry_after == len(shed),
        "retry_after_s": dict(Counter(retry)), "late": summary_ms([a.late_s for a in recorded]),
    }


def print_levels(levels: list[dict]) -> None:
    print(f"\n{'load':>5} {'offered/s':>9} {'goodput/s':>9} {'200 p50':>8} {'200 p99':>8} {'shed':>6} "
          f"{'503 p50':>8} {'503 p99':>8} {'>100ms':>6} {'other':>8} {'Retry-After':>11} {'late p99':>8}")
    for level in levels:
        ok, shed = level["answered"], level["time_to_503"]
        other = ",".join(f"{k}:{v}" for k, v in level["other"].items()) or "-"
        print(f"{level['load']:4.1f}x {level['offered_per_s']:9.1f} {level['goodput_per_s']:9.2f} "
              f"{_ms(ok, 'p50_ms'):>8} {_ms(ok, 'p99_ms'):>8} {level['shed_share']:6.1%} "
              f"{_ms(shed, 'p50_ms'):>8} {_ms(shed, 'p99_ms'):>8} {level['shed_over_100ms']:6d} {other:>8} "
              f"{'every 503' if level['retry_after_on_every_503'] else 'MISSING':>11} {_ms(level['late'], 'p99_ms'):>8}")
    print("(times in ms from sending to the whole answer; 200: answered, 503: shed; >100ms: 503s slower than that; other: "
          "any other status or client error; late: how long after it was due the client sent a request)")


def _ms(summary: dict, key: str) -> str:
    return f"{summary[key]:.0f}" if key in summary else "-"
