"""The regressor's losses: the paper's MSE, and a distance loss on the same 2-D output that does not hedge.

An MSE regressor predicts the mean of the references it hesitates between, and the point halfway
between two frequent references is often nearest to an unrelated third one: R4 then decides that
third combination (`../shared/notes/decision-quality.md`: an ideal MSE regressor still loses
0.15–0.22 F1 to the ideal classifier). The distance loss scores the point by the softmax of its
negative squared distances to the 26 references, cross-entropy against the scan's combination,
with a small MSE term that keeps it near its reference: a hesitant point is pulled to one of the
candidates instead of between them. The output is still a point on the reference space, so the
rules, the sentence, the plots and the similar cases are unchanged.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from clare_dist.rules import References

LOSSES: tuple[str, ...] = ("mse", "distance")
MSE_WEIGHT = 1.0  # of the distance loss's MSE term, against its cross-entropy


def reference_temperature(references: References) -> float:
    """The softmax temperature: half the mean squared distance from each reference to its nearest.
    A function of the layout alone, so nothing in it is fitted to any fold's data."""
    diff = references.coords[:, None, :] - references.coords[None, :, :]
    squared = (diff**2).sum(axis=2)
    np.fill_diagonal(squared, np.inf)
    return float(squared.min(axis=1).mean() / 2)


class ReferenceDistanceLoss(nn.Module):
    """Cross-entropy of softmax(−‖p − r_j‖² / T) against the target's reference, plus MSE_WEIGHT × MSE.

    Targets are the coordinates of each scan's true reference, as for the MSE loss, so the two
    losses take the same data; the target's reference is the one at those coordinates.
    """

    def __init__(self, references: References, temperature: float | None = None, mse_weight: float = MSE_WEIGHT) -> None:
        super().__init__()
        self.register_buffer("references", torch.tensor(references.coords, dtype=torch.float32))
        self.temperature = reference_temperature(references) if temperature is None else temperature
        self.mse_weight = mse_weight

    def forward(self, points: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        refs = self.references.to(points.device)
        logits = -torch.cdist(points, refs).pow(2) / self.temperature
        classes = torch.cdist(targets, refs).argmin(dim=1)
        return F.cross_entropy(logits, classes) + self.mse_weight * F.mse_loss(points, targets)


def regression_loss(name: str, references: References) -> nn.Module:
    """The regressor's loss by name: "mse" (the paper's) or "distance"."""
    if name == "mse":
        return nn.MSELoss()
    if name == "distance":
        return ReferenceDistanceLoss(references)
    raise ValueError(f"unknown regression loss {name!r}; expected one of {LOSSES}")
