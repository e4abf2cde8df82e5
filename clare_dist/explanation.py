"""The sentence that tells a clinician how a decision was reached (the paper's Phase III text).

It needs only the top-3 references and the R4 decision, so the batch job, the API and the
report all produce the same words for the same scan.
"""

from __future__ import annotations

from typing import Sequence

from clare_dist.labels import NO_FINDING, combination_classes, describe_classes


def explanation(top3: Sequence[str], decision: str) -> str:
    """The sentence shown with a decision, in the words of the paper's example (Fig. 5c)."""
    closest = top3[0]
    if decision == NO_FINDING:
        others = ", ".join(top3[1:])
        return (
            "This scan is unlikely to include any of the screened findings, resulting in a No Finding decision. "
            "The system has reached this decision because No Finding is the closest reference to the scan's "
            f"position in the reference space. The nearest references with findings are: {others}."
        )
    classes = combination_classes(decision)
    recurrent = [c for c in classes if c not in combination_classes(closest)]
    reason = f"because {closest} is the most probable finding present in the image"
    if len(recurrent) == 1:
        reason += f", and {recurrent[0]} is a recurrent finding in images with similar characteristics"
    elif recurrent:
        joined = ", ".join(recurrent[:-1]) + " and " + recurrent[-1]
        reason += f", and {joined} are recurrent findings in images with similar characteristics"
    return (
        f"This scan is likely to include findings associated with {describe_classes(classes)}, "
        f"resulting in a {decision} diagnosis. The system has reached this decision {reason}. "
        f"Here is the complete list of possible lesions present: {', '.join(top3)}."
    )
