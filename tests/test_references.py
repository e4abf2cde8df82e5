import json

import numpy as np
import pytest
import torch

from clare_dist.labels import COMBINATION_VECTORS, COMBINATIONS, NO_FINDING
from clare_dist.reference_file import load_references
from clare_dist.references import (
    AutoencoderConfig,
    LabelAutoencoder,
    ReferenceError,
    build_references,
)


def test_references_are_distinct_separated_and_normalised(reference_dir):
    refs = load_references(reference_dir)
    document = json.loads((reference_dir / "references.json").read_text())
    assert refs.names == COMBINATIONS
    assert len({tuple(c) for c in refs.coords.round(6)}) == 26
    assert refs.min_pairwise_distance() >= 0.02
    assert document["min_pairwise_distance"] == pytest.approx(refs.min_pairwise_distance())
    assert np.allclose(refs.coords.min(axis=0), 0) and np.allclose(refs.coords.max(axis=0), 1)
    assert (reference_dir / "references.png").stat().st_size > 10_000


def test_every_combination_decodes_back_to_its_own_vector(reference_dir):
    document = json.loads((reference_dir / "references.json").read_text())
    model = LabelAutoencoder(tuple(document["config"]["hidden"]))
    model.load_state_dict(torch.load(reference_dir / "autoencoder.pt"))
    with torch.no_grad():
        codes = model.encoder(torch.tensor(COMBINATION_VECTORS, dtype=torch.float32))
        decoded = model.decoder(codes).numpy()
    assert ((decoded > 0.5) == COMBINATION_VECTORS.astype(bool)).all()
    assert document["reconstruction_mse"] == pytest.approx(float(((decoded - COMBINATION_VECTORS) ** 2).mean()), rel=1e-4)
    assert document["reconstruction_mse"] < 0.02
    # The stored references are the normalised codes.
    raw_min, raw_max = np.array(document["raw_min"]), np.array(document["raw_max"])
    normalised = (codes.numpy() - raw_min) / (raw_max - raw_min)
    assert np.allclose(normalised, load_references(reference_dir).coords, atol=1e-6)
    # No Finding is untrained, yet decodes to zeros: the bias-free network maps 0 to 0.
    assert np.abs(decoded[COMBINATIONS.index(NO_FINDING)]).max() == 0


def test_same_seed_same_references(reference_dir):
    again = build_references(AutoencoderConfig(seed=0))
    assert np.array_equal(again.references.coords, load_references(reference_dir).coords)


def test_a_bar_no_seed_can_meet_raises_with_advice():
    with pytest.raises(ReferenceError, match="train longer"):
        build_references(AutoencoderConfig(epochs=1, copies=4, batch_size=50, max_attempts=2, min_distance=2.0))


def test_loading_bad_files_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="clare-dist references"):
        load_references(tmp_path)
    (tmp_path / "references.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_references(tmp_path)
    (tmp_path / "references.json").write_text(json.dumps({"format_version": 99}))
    with pytest.raises(ValueError, match="format version"):
        load_references(tmp_path)
