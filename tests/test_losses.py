"""The regressor's losses: the distance loss on a toy layout, where the MSE point hedges."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clare_dist.labels import COMBINATIONS
from clare_dist.losses import ReferenceDistanceLoss, reference_temperature, regression_loss
from clare_dist.rules import References

# Two combinations A and B a unit apart, a third C above their midpoint (nearer to it than A or B
# are), the other 23 far away: the layout where hedging between A and B decides C.
A, B, C = COMBINATIONS[1], COMBINATIONS[2], COMBINATIONS[3]
PLACES = {A: (0.0, 0.0), B: (1.0, 0.0), C: (0.5, 0.3)}
OTHERS = [name for name in COMBINATIONS if name not in PLACES]
LAYOUT = References.from_mapping(PLACES | {name: (5.0 + 0.3 * j, 5.0) for j, name in enumerate(OTHERS)})


def nearest(point: np.ndarray) -> str:
    return LAYOUT.names[int(np.linalg.norm(LAYOUT.coords - point, axis=1).argmin())]


def settle(loss, steps: int = 4000, lr: float = 0.01) -> np.ndarray:
    """The single point that minimises `loss` over a batch where A and B are equally likely."""
    targets = torch.tensor([PLACES[A], PLACES[B]], dtype=torch.float32)
    point = torch.tensor([[0.5, 0.01]], requires_grad=True)
    optimiser = torch.optim.Adam([point], lr=lr)
    for _ in range(steps):
        optimiser.zero_grad()
        loss(point.expand(2, 2), targets).backward()
        optimiser.step()
    return point.detach().numpy()[0]


def test_mse_hedges_to_the_midpoint_which_decides_the_unrelated_third():
    point = settle(regression_loss("mse", LAYOUT))
    np.testing.assert_allclose(point, [0.5, 0.0], atol=1e-3)
    assert nearest(point) == C


def test_the_distance_loss_settles_where_a_or_b_is_nearest_never_c():
    point = settle(regression_loss("distance", LAYOUT))
    assert nearest(point) in (A, B)
    assert abs(point[0] - 0.5) < 0.05 and point[1] < 0  # symmetric between A and B, pushed away from C


def test_the_gradient_at_a_point_between_two_references_pulls_toward_the_target():
    loss = ReferenceDistanceLoss(LAYOUT)
    point = torch.tensor([[0.4, 0.0]], requires_grad=True)
    loss(point, torch.tensor([PLACES[A]], dtype=torch.float32)).backward()
    step = -point.grad.numpy()[0]
    assert np.dot(step, np.array(PLACES[A]) - [0.4, 0.0]) > 0
    at_target = loss(torch.tensor([PLACES[A]]), torch.tensor([PLACES[A]]))
    assert float(at_target) < float(loss(point.detach(), torch.tensor([PLACES[A]], dtype=torch.float32)))


def test_the_temperature_is_the_layouts_own():
    squared_nearest = [0.3**2 + 0.5**2] * 3  # A, B and C: each is 0.583 from its nearest
    far = [0.3**2] * 23  # the other 23, 0.3 apart in a row
    assert reference_temperature(LAYOUT) == pytest.approx(np.mean(squared_nearest + far) / 2)
    with pytest.raises(ValueError, match="unknown regression loss"):
        regression_loss("huber", LAYOUT)
