"""A trained bundle on the real CXR14 sample, for measuring how a change of preprocessing moves decisions.

The benchmarks' usual bundle is untrained (throughput does not depend on the weights), but
whether a faster preprocessing keeps the model's decisions does. This trains fold 0 of the 501
real NIH scans of the shared sample (ResNet18, no pretrained weights, a few epochs: small, but its
decisions follow the image content) with the legacy preprocessing, exports it as a bundle, and
keeps the run so `bench_decode.py --agreement` can score the scans it was not trained on.

    python benchmarks/agreement_bundle.py --out /tmp/agreement     # ~10 min on 2 cores
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import pandas as pd
import torch
from common import SAMPLE, SAMPLE_IMAGES

from clare_dist.bundle import write_bundle
from clare_dist.cli import main as cli
from clare_dist.export import export_regressor
from clare_dist.models import ModelConfig, build_model
from clare_dist.reference_file import REFERENCES_FILE, load_references
from clare_dist.run_export import check_images
from clare_dist.runs import best_weights, fold_dir
from clare_dist.training import TrainConfig, train_fold

FOLD = 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--preprocessing", default="lanczos/1", help="what the model is trained with")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.manual_seed(0)
    prepared, references = args.out / "prepared", args.out / "references"
    if not (prepared / "labels.parquet").is_file():
        assert cli(["prepare", "--data-entry", str(SAMPLE / "Data_Entry_sample.csv"), "--out", str(prepared)]) == 0
    if not (references / REFERENCES_FILE).is_file():
        assert cli(["references", "--out", str(references)]) == 0
    table = pd.read_parquet(prepared / "labels.parquet")
    config = TrainConfig(backbone="resnet18", image_size=args.size, epochs=args.epochs, batch_size=16, num_workers=0,
                         patience=args.epochs, preprocessing=args.preprocessing)
    fold = fold_dir(args.out / "run", FOLD)
    train_fold(FOLD, table, SAMPLE_IMAGES, load_references(references / REFERENCES_FILE), fold, config)
    model = build_model(ModelConfig(backbone="resnet18", head="regression"))
    model.load_state_dict(torch.load(best_weights(fold, "regressor"), map_location="cpu", weights_only=True))
    onnx_path = args.out / "regressor.onnx"
    images = check_images(table, SAMPLE_IMAGES, args.size, count=8, preprocessing=args.preprocessing)
    export_regressor([model.eval()], onnx_path, args.size, images)
    bundle = write_bundle(args.out / "bundle", onnx_path, references / REFERENCES_FILE, backbone="resnet18",
                          image_size=args.size, folds=[FOLD], ensemble=False, metrics={}, preprocessing_id=args.preprocessing)
    print(f"wrote {bundle.path} ({bundle.model_version}, trained with {bundle.preprocessing}); held out: the "
          f"validation and test folds of fold {FOLD} in {prepared / 'labels.parquet'}")


if __name__ == "__main__":
    main()
