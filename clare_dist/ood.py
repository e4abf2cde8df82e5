"""Whether a scan lies outside what the model knows: the "needs human review" flag.

A screening aid must say when it should not be trusted: a rotated or inverted film, a blank or
saturated exposure, a heavy crop, something that is no radiograph at all. The regressor maps any
such image to some point of the reference space, and R4 decides something there, so the point
itself cannot tell. What can is how unlike the training archive the network's own view of the
scan is: the penultimate (pooled) features of the regressor, whose mean and covariance over the
training images are fitted once (Ledoit–Wolf shrinkage: an archive may hold fewer images than
features) and stored in the bundle's graph.

The graph's second output, `ood_score`, is the Mahalanobis distance of a scan's features to the
training archive's (as the root mean square of its whitened features), divided by the threshold
fitted on the validation fold: the distance that at most `FLAG_RATE` of its in-distribution scans
exceed. So a score of 1 is the threshold wherever it is read, and a scan scoring above it
`needs_review`. The threshold is in the graph, so `model_version` names it; the test fold is never
used to choose it (the evaluation measures on it what share is flagged).

Numpy only: the fitting runs in training, the flag wherever a scan is screened.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

OOD_OUTPUT = "ood_score"  # the graph's second output, N float32
FLAG_RATE = 0.05  # the share of in-distribution validation scans the threshold lets through flagged, at most
REVIEW_ABOVE = 1.0  # a score above this (the fitted threshold, in its own units) needs human review


@dataclass(frozen=True)
class FeatureStatistics:
    """The training archive's penultimate features, and the threshold fitted on validation scans.

    `whitening` is W with W Wᵀ the (shrunk) inverse covariance, so the distance of features f is
    the root mean square of (f − mean) W; `threshold` is that distance's cut-off.
    """

    mean: np.ndarray
    whitening: np.ndarray
    threshold: float
    train_images: int
    validation_images: int
    validation_flagged: float

    def distances(self, features: np.ndarray) -> np.ndarray:
        """The Mahalanobis distance (root mean square over the whitened dimensions) of N feature rows."""
        whitened = (np.asarray(features, dtype=np.float64) - self.mean) @ self.whitening
        return np.sqrt((whitened**2).mean(axis=1))

    def scores(self, features: np.ndarray) -> np.ndarray:
        """The OOD scores of N feature rows: their distances in units of the threshold."""
        return self.distances(features) / self.threshold

    def arrays(self) -> dict[str, np.ndarray]:
        """Everything as arrays, for `np.savez` (`from_arrays` reads it back)."""
        return {"mean": self.mean, "whitening": self.whitening, "threshold": np.float64(self.threshold),
                "train_images": np.int64(self.train_images), "validation_images": np.int64(self.validation_images),
                "validation_flagged": np.float64(self.validation_flagged)}

    @classmethod
    def from_arrays(cls, arrays) -> FeatureStatistics:
        return cls(mean=np.asarray(arrays["mean"], np.float64), whitening=np.asarray(arrays["whitening"], np.float64),
                   threshold=float(arrays["threshold"]), train_images=int(arrays["train_images"]),
                   validation_images=int(arrays["validation_images"]),
                   validation_flagged=float(arrays["validation_flagged"]))


def fit_statistics(train_features: np.ndarray, validation_features: np.ndarray,
                   flag_rate: float = FLAG_RATE) -> FeatureStatistics:
    """Mean and shrunk covariance from the training images' features; the threshold from the
    validation images', the smallest of their distances that at most `flag_rate` of them exceed."""
    from sklearn.covariance import LedoitWolf  # loads only where statistics are fitted

    train = np.asarray(train_features, dtype=np.float64)
    validation = np.asarray(validation_features, dtype=np.float64)
    if train.ndim != 2 or validation.ndim != 2 or train.shape[1] != validation.shape[1]:
        raise ValueError(f"features must be N×D rows of the same D; got {train.shape} and {validation.shape}")
    if len(train) < 2 or len(validation) < 1:
        raise ValueError(f"fitting needs at least 2 training and 1 validation images; got {len(train)} and {len(validation)}")
    if not 0 < flag_rate < 1:
        raise ValueError(f"flag_rate must lie between 0 and 1; got {flag_rate}")
    covariance = LedoitWolf().fit(train)
    precision = covariance.precision_
    whitening = np.linalg.cholesky((precision + precision.T) / 2)
    unscaled = FeatureStatistics(covariance.location_, whitening, 1.0, len(train), len(validation), 0.0)
    distances = unscaled.distances(validation)
    threshold = float(np.quantile(distances, 1 - flag_rate, method="higher"))
    if not threshold > 0:
        raise ValueError("every validation image has the training mean's features; the model sees nothing in them")
    return FeatureStatistics(unscaled.mean, whitening, threshold, len(train), len(validation),
                             float((distances > threshold).mean()))


def manifest_entry(statistics: FeatureStatistics, features: str, onnx_max_rel_diff: float | None) -> dict[str, Any]:
    """The bundle manifest's `ood` entry: the graph's output and how its threshold was fitted."""
    return {"name": OOD_OUTPUT, "shape": [None], "dtype": "float32", "review_above": REVIEW_ABOVE,
            "features": features, "threshold": statistics.threshold, "flag_rate": FLAG_RATE,
            "train_images": statistics.train_images, "validation_images": statistics.validation_images,
            "validation_flagged": statistics.validation_flagged, "onnx_max_rel_diff": onnx_max_rel_diff}


def needs_review(scores: np.ndarray) -> np.ndarray:
    """Which of N OOD scores lie above the threshold: scans the model should not judge alone."""
    return np.asarray(scores, dtype=np.float64) > REVIEW_ABOVE


def review_note(flagged: bool | None, score: float | None) -> str:
    """The flag in words, the same in the text summary, the report, the worklist and the SR."""
    if flagged is None:
        return ("Not checked for out-of-distribution input: the model bundle has no OOD score "
                "(a bundle exported from a run trained with it has)")
    if flagged:
        return (f"Needs human review: the scan lies outside what the model knows (OOD score {score:.2f} > "
                f"{REVIEW_ABOVE:g}); do not rely on its decision")
    return f"Within what the model knows (OOD score {score:.2f} ≤ {REVIEW_ABOVE:g})"
