"""bench_serve's summary: the overhead at C = 1 (paired, and split by stage) and the saturation
fraction against batched ONNX Runtime, held to DESIGN.md §3's targets."""

from __future__ import annotations

import numpy as np
from serve_baseline import STAGES
from serve_load import cpu_ms_per_request

SATURATION_TARGET = 0.9  # DESIGN.md §3: saturated req/s against batched ONNX Runtime's img/s


def verdict(base: dict, http: dict, batch_wait_ms: float) -> dict:
    """Overhead at C=1 (paired; and the load level's p50 over the baseline's, with where it goes)
    and the saturation fraction."""
    paired, levels = http["paired_c1"], http["levels"]
    result: dict = {"overhead_paired_p50_ms": paired["overhead_p50_ms"],
                    "overhead_target_met": bool(paired["overhead_p50_ms"] <= 10.0)}
    single = next((lvl for lvl in levels if lvl["concurrency"] == 1 and lvl["ok"]), None)
    if single:
        result["overhead_p50_ms"] = single["latency"]["p50_ms"] - base["latency"]["p50_ms"]
        result["overhead_mean_ms"] = single["latency"]["mean_ms"] - base["latency"]["mean_ms"]
        hops = {f"{stage}_slower_ms": single["server_timing_mean_ms"].get(stage, float("nan")) - base["stage_mean_ms"][stage]
                for stage in STAGES}
        result["overhead_split_ms"] = hops | {"queue_ms": single["server_timing_mean_ms"].get("queue", 0.0),
                                              "outside_stages_ms": single["outside_stages_mean_ms"],
                                              "of_which_batch_wait_ms": batch_wait_ms}
    loaded = [lvl for lvl in levels if lvl["ok"]]
    if loaded:
        top = max(loaded, key=lambda lvl: lvl["concurrency"])
        best = max(loaded, key=lambda lvl: lvl["req_s"])
        ort = (base["ort_batched"]["img_s"] + http["ort_batched_after"]["img_s"]) / 2
        # Where the cores went at saturation: the CPU each answer took, against what batched ORT
        # alone takes per image (the rest is decoding and the serving path).
        spent = sum(cpu_ms_per_request(top).values())
        ort_cpu = float(np.mean([m[m["best"]]["cpu_ms_per_image"] for m in (base["ort_batched"], http["ort_batched_after"])]))
        result |= {"cpu_ms_per_request": spent, "batched_ort_cpu_ms_per_image": ort_cpu,
                   "cpu_ms_beyond_batched_ort": spent - ort_cpu, "machine_busy": top["cpu"]["utilisation"]}
        result |= {
            "ort_batched_img_s": ort,
            "saturated_concurrency": top["concurrency"], "saturated_req_s": top["req_s"], "best_req_s": best["req_s"],
            "saturation_fraction": top["req_s"] / ort,
            "saturation_vs_decode_plus_ort": top["req_s"] / base["decode_plus_batched_ort_img_s"],
            "saturation_target_met": bool(top["req_s"] / ort >= SATURATION_TARGET),
        }
    return result


def print_verdict(v: dict, base: dict) -> None:
    print("\n== summary ==")
    print(f"overhead at C=1, paired: p50 {v['overhead_paired_p50_ms']:+.1f} ms (target <= 10 ms)")
    if "overhead_p50_ms" in v:
        split = v["overhead_split_ms"]
        print(f"overhead at C=1, load level vs baseline (minutes apart): p50 {v['overhead_p50_ms']:+.1f} ms "
              f"(mean {v['overhead_mean_ms']:+.1f} ms): "
              f"decode {split['decode_slower_ms']:+.1f}, regress {split['regress_slower_ms']:+.1f} "
              f"(incl. up to {split['of_which_batch_wait_ms']:g} ms batch wait), lookup {split['lookup_slower_ms']:+.1f} "
              f"slower than in-process; waiting for a scan worker {split['queue_ms']:.1f} ms; "
              f"outside the stages {split['outside_stages_ms']:.1f} ms")
    if "saturation_fraction" in v:
        print(f"saturated (C={v['saturated_concurrency']}): {v['saturated_req_s']:.2f} req/s = {v['saturation_fraction']:.2f}x "
              f"batched ORT's {v['ort_batched_img_s']:.1f} img/s (mean of before and after; target >= {SATURATION_TARGET}x); "
              f"{v['saturation_vs_decode_plus_ort']:.2f}x decode + batched ORT in one process "
              f"({base['decode_plus_batched_ort_img_s']:.1f} img/s: the chain must decode on the same cores)")
        print(f"at saturation each answer took {v['cpu_ms_per_request']:.1f} ms of core time ({v['machine_busy']:.0%} of the "
              f"machine busy); batched ORT alone takes {v['batched_ort_cpu_ms_per_image']:.1f} ms an image, so "
              f"{v['cpu_ms_beyond_batched_ort']:.1f} ms went to decoding ({base['stage_mean_ms']['decode']:.1f} ms in-process), "
              f"the serving path, Ray and ORT running below its batched efficiency")
