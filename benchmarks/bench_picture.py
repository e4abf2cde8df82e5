"""The explanation picture (the Secondary Capture's pixels, the plot route's PNG): how long one takes.

Drawing it bounds the PACS store-back (benchmarks/README.md, bench_pacs.py), so it is timed on its
own: `explanation_figure` with a real scan and nine similar cases (real NIH thumbnails, one of
them missing) rendered to RGB by `figure_rgb`, as `result_files.explanation_picture` does, in one
thread. Min and median of `--repeats` pictures after one warm-up.

    python benchmarks/bench_picture.py
    PYTHONPATH=/path/to/other/checkout python benchmarks/bench_picture.py   # the same for another version
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
from common import cxr_pngs, machine, write_json
from PIL import Image

from clare_dist.explanation import explanation
from clare_dist.labels import COMBINATIONS
from clare_dist.plots import explanation_figure, figure_rgb
from clare_dist.result import INTENDED_USE, Screening
from clare_dist.rules import References, apply_rules
from clare_dist.screening import THUMBNAIL_SIZE


def picture_inputs() -> tuple[Screening, References, list, np.ndarray]:
    """A screening on a reference grid, nine similar cases (the last one missing) and the scan."""
    references = References.from_mapping({name: (i % 6 / 5, i // 6 / 4) for i, name in enumerate(COMBINATIONS)})
    point = (0.33, 0.27)
    rules = apply_rules(np.array([point]), references)
    decision, top3 = str(rules.decision[0]), [str(name) for name in rules.top3[0]]
    screening = Screening(scan_id="the scan", model_version="m-bench", x=point[0], y=point[1], top3=top3,
                          top3_distances=[float(d) for d in rules.distances[0]], combination=decision,
                          explanation=explanation(top3, decision), ood_score=1.3, needs_review=True,
                          **dict.fromkeys(("Ca", "Pa", "Pn", "Pl", "Ot"), 0))
    files = cxr_pngs()[:9]

    def thumbnail(path: Path) -> np.ndarray:
        with Image.open(path) as image:
            return np.asarray(image.convert("L").resize((THUMBNAIL_SIZE, THUMBNAIL_SIZE)))

    cases = [(path.name, decision, 0.01 * (i + 1), thumbnail(path)) for i, path in enumerate(files[:8])]
    return screening, references, cases + [("moved.png", decision, 0.09, None)], thumbnail(files[8])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/picture.json"))
    parser.add_argument("--save", type=Path, default=None, help="also write one picture as PNG, to look at")
    args = parser.parse_args()
    screening, references, cases, scan = picture_inputs()

    def draw() -> np.ndarray:
        return figure_rgb(explanation_figure(screening, references, cases, INTENDED_USE, scan_image=scan))

    picture = draw()
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        draw()
        times.append((time.perf_counter() - start) * 1000)
    row = {"pixels": list(picture.shape), "min_ms": min(times), "median_ms": statistics.median(times), "repeats": args.repeats}
    print(f"explanation picture {picture.shape[1]}×{picture.shape[0]}, 9 similar cases: "
          f"min {row['min_ms']:.0f} ms, median {row['median_ms']:.0f} ms of {args.repeats}")
    if args.save is not None:
        Image.fromarray(picture).save(args.save)
    print(f"wrote {write_json({'benchmark': 'picture', 'machine': machine(), 'row': row}, args.out)}")


if __name__ == "__main__":
    main()
