"""How often this machine takes the core away from a running thread, and for how long.

A p99 target on a call of tens of µs is a statement about the machine as much as about the
code: if the kernel's timer, another process or the hypervisor stops the thread R times a second,
a call of T seconds is stopped with probability ≈ R·T, and once that passes 1 % the 99th
percentile is an interrupted call (its time plus the interruption, plus the caches refilled
after it). This spins on the clock and records every gap, so a benchmark can report beside its
tail what the machine allowed (`clean_call_limit_us`: the longest call stopped in under 1 % of
calls). Run alone: `python benchmarks/machine_noise.py`.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

THRESHOLD_US = 5.0  # a gap longer than this is an interruption, not the loop's own pace (~0.1 µs)


def interruptions(seconds: float = 2.0, threshold_us: float = THRESHOLD_US) -> dict[str, float]:
    """Spin on `perf_counter_ns` for `seconds`; the rate, length and time share of the gaps."""
    clock, threshold = time.perf_counter_ns, int(threshold_us * 1e3)
    gaps: list[int] = []
    start = last = clock()
    end = start + int(seconds * 1e9)
    while last < end:
        now = clock()
        if now - last > threshold:
            gaps.append(now - last)
        last = now
    elapsed = (last - start) / 1e9
    us = np.array(gaps, dtype=np.float64) / 1e3 if gaps else np.zeros(1)
    rate = len(gaps) / elapsed
    return {
        "seconds": elapsed,
        "per_s": rate,
        "gap_p50_us": float(np.percentile(us, 50)),
        "gap_p90_us": float(np.percentile(us, 90)),
        "gap_max_us": float(us.max()),
        "time_lost_share": float(us.sum() / 1e6 / elapsed),
        "clean_call_limit_us": 0.01 / rate * 1e6 if rate else float("inf"),
    }


def describe(noise: dict[str, float], call_us: float | None = None) -> str:
    """One line for a report; with `call_us`, how often a call that long is interrupted."""
    line = (f"machine: {noise['per_s']:.0f} interruptions/s (median {noise['gap_p50_us']:.0f} µs, "
            f"p90 {noise['gap_p90_us']:.0f} µs, {100 * noise['time_lost_share']:.1f} % of the time); "
            f"calls under {noise['clean_call_limit_us']:.0f} µs are interrupted in < 1 % of calls")
    if call_us is not None:
        line += f"; one of {call_us:.0f} µs in ~{100 * noise['per_s'] * call_us / 1e6:.1f} %"
    return line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    noise = interruptions(args.seconds)
    print(describe(noise))
    print(json.dumps(noise, indent=2))


if __name__ == "__main__":
    main()
