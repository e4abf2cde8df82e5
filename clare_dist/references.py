"""Phase I: the label autoencoder whose 2-D codes become the 26 reference coordinates.

The references are the coordinate system every later phase regresses into, so they must be
reproducible (deterministic for a seed) and usable: every combination distinct, decoded back
to its own vector, and far enough from its neighbours that the rules can tell them apart. A
seed whose training does not reach that is retried with the next seed, deterministically.
Reading and writing references.json needs no torch: that is `clare_dist.reference_file`.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from clare_dist.errors import ClareError
from clare_dist.labels import COMBINATION_VECTORS, COMBINATIONS
from clare_dist.reference_file import write_references
from clare_dist.rules import References

log = logging.getLogger(__name__)

AUTOENCODER_FILE = "autoencoder.pt"


@dataclass(frozen=True)
class AutoencoderConfig:
    """Defaults reproduce the paper: 25 combinations × 1000, MSE, 5 linear layers each side."""

    hidden: tuple[int, ...] = (128, 128, 64, 32)
    copies: int = 1000
    epochs: int = 80
    batch_size: int = 1000
    learning_rate: float = 2e-3
    seed: int = 0
    max_attempts: int = 10
    min_distance: float = 0.02


class LabelAutoencoder(nn.Module):
    """5 → 2 → 5 MLP without biases; ReLU between layers, the 2-D code and the output linear.

    No Finding is not trained on (as in the paper), yet it must decode back to zeros. With
    biases that happened for about one seed in six here; without biases the network maps the
    zero vector to the origin and back to zero, so No Finding is right by construction.
    The paper puts a ReLU after every layer; one on the 2-D code or the output can zero a whole
    axis and merge references, so those two stay linear.
    """

    def __init__(self, hidden: tuple[int, ...] = AutoencoderConfig.hidden, n_classes: int = 5, latent: int = 2):
        super().__init__()
        self.encoder = _mlp([n_classes, *hidden, latent])
        self.decoder = _mlp([latent, *reversed(hidden), n_classes])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


def _mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b, bias=False))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


@dataclass
class ReferenceSpace:
    """The references with the evidence that they are usable."""

    references: References
    raw_min: np.ndarray
    raw_max: np.ndarray
    reconstruction_mse: float
    min_distance: float
    seed_used: int
    attempts: int
    seconds: float
    model: LabelAutoencoder = field(repr=False)
    config: AutoencoderConfig = field(default_factory=AutoencoderConfig)


class ReferenceError(ClareError, RuntimeError):
    """No seed produced references that meet the quality bar."""


def train_autoencoder(config: AutoencoderConfig, seed: int) -> LabelAutoencoder:
    """Train on the 25 non-empty combinations, each repeated `copies` times (No Finding excluded)."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = LabelAutoencoder(config.hidden)
    targets = torch.tensor(COMBINATION_VECTORS[1:], dtype=torch.float32).repeat(config.copies, 1)
    optimiser = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    steps_per_epoch = len(targets) // config.batch_size
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=config.epochs * steps_per_epoch)
    loss_fn = nn.MSELoss()
    for _ in range(config.epochs):
        for batch in torch.randperm(len(targets), generator=generator).split(config.batch_size):
            optimiser.zero_grad()
            loss = loss_fn(model(targets[batch]), targets[batch])
            loss.backward()
            optimiser.step()
            schedule.step()
    return model.eval()


def build_references(config: AutoencoderConfig = AutoencoderConfig()) -> ReferenceSpace:
    """Train, normalise to [0, 1] per axis, check; retry with seed+1… until the checks pass."""
    start = time.perf_counter()
    problems: list[str] = []
    for attempt in range(config.max_attempts):
        seed = config.seed + attempt
        with torch.random.fork_rng():
            model = train_autoencoder(config, seed)
        vectors = torch.tensor(COMBINATION_VECTORS, dtype=torch.float32)
        with torch.no_grad():
            raw = model.encoder(vectors).double().numpy()
            decoded = model.decoder(model.encoder(vectors)).numpy()
        raw_min, raw_max = raw.min(axis=0), raw.max(axis=0)
        normalised = (raw - raw_min) / np.where(raw_max > raw_min, raw_max - raw_min, 1.0)
        references = References.from_mapping(dict(zip(COMBINATIONS, normalised)))
        problem = _quality_problem(decoded, references, config.min_distance)
        if problem is None:
            mse = float(((decoded - COMBINATION_VECTORS) ** 2).mean())
            space = ReferenceSpace(
                references=references,
                raw_min=raw_min,
                raw_max=raw_max,
                reconstruction_mse=mse,
                min_distance=references.min_pairwise_distance(),
                seed_used=seed,
                attempts=attempt + 1,
                seconds=time.perf_counter() - start,
                model=model,
                config=config,
            )
            log.info("references from seed %d: min distance %.4f, MSE %.3g", seed, space.min_distance, mse)
            return space
        problems.append(f"seed {seed}: {problem}")
        log.info("references from seed %d rejected: %s", seed, problem)
    raise ReferenceError(
        f"no usable references after {config.max_attempts} seeds ({'; '.join(problems)}); "
        "train longer (epochs) or lower min_distance"
    )


def _quality_problem(decoded: np.ndarray, references: References, min_distance: float) -> str | None:
    wrong = [name for name, row, target in zip(COMBINATIONS, decoded, COMBINATION_VECTORS) if not ((row > 0.5) == target.astype(bool)).all()]
    if wrong:
        return f"{wrong} do not decode back to their own vector"
    distance = references.min_pairwise_distance()
    if distance < min_distance:
        return f"two references are only {distance:.4f} apart (need ≥ {min_distance})"
    return None


def save_references(space: ReferenceSpace, out_dir: str | os.PathLike) -> Path:
    """Write references.json (the contract read by training, batch and serving) and the weights."""
    path = write_references(out_dir, space.references, {
        "raw_min": space.raw_min.tolist(),
        "raw_max": space.raw_max.tolist(),
        "min_pairwise_distance": space.min_distance,
        "reconstruction_mse": space.reconstruction_mse,
        "seed_used": space.seed_used,
        "attempts": space.attempts,
        "config": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(space.config).items()},
    })
    torch.save(space.model.state_dict(), path.parent / AUTOENCODER_FILE)
    return path
