"""A screening as lines of text, for a terminal (`clare-dist predict`) or a report entry."""

from __future__ import annotations

from clare_dist.ood import review_note
from clare_dist.result import INTENDED_USE, Screening


def summary(screening: Screening) -> str:
    if not screening.ok:
        return f"{screening.scan_id}: not screened ({screening.error_kind}): {screening.error_reason}"
    top3 = ", ".join(f"{name} ({d:.3f})" for name, d in zip(screening.top3, screening.top3_distances))
    lines = [f"{screening.scan_id}: {screening.combination}"]
    if screening.needs_review:  # before the decision's details, which are not to be relied on
        lines.append(f"  ** {review_note(screening.needs_review, screening.ood_score)} **")
    lines += [f"  top 3 (distance): {top3}", f"  {screening.explanation}"]
    if screening.similar_cases:
        lines.append(f"  similar cases ({screening.combination}, nearest first):")
        lines += [f"    {c.case_id}  {c.combination}  {c.distance:.4f}" for c in screening.similar_cases]
    if screening.similar_note:
        lines.append(f"  note: {screening.similar_note}")
    if not screening.needs_review:
        lines.append(f"  {review_note(screening.needs_review, screening.ood_score)}")
    lines.append(f"  model {screening.model_version}; {INTENDED_USE}")
    return "\n".join(lines)
