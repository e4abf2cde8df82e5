import gzip

import numpy as np
import pandas as pd
import pytest

from clare_dist.cli import main
from clare_dist.cxr14 import (
    DATA_ENTRY_HEADER,
    LABEL_COLUMNS,
    MetadataError,
    combination_counts,
    fold_split,
    label_table,
    read_data_entry,
)
from clare_dist.labels import TABLE1_COUNTS

HEADER = DATA_ENTRY_HEADER


@pytest.fixture(scope="module")
def full_table(shared_data, tmp_path_factory):
    """`clare-dist prepare` on the complete NIH label file, as a user runs it."""
    out = tmp_path_factory.mktemp("prepared")
    assert main(["prepare", "--data-entry", str(shared_data / "Data_Entry_2017_v2020.csv.gz"), "--out", str(out)]) == 0
    return pd.read_parquet(out / "labels.parquet")


def test_full_file_gives_the_papers_table_1_exactly(full_table):
    assert len(full_table) == 110_486
    assert combination_counts(full_table).to_dict() == TABLE1_COUNTS
    assert list(full_table.columns) == list(LABEL_COLUMNS)


def test_no_patient_in_two_folds(full_table):
    assert full_table.groupby("patient_id")["fold"].nunique().max() == 1
    assert sorted(full_table["fold"].unique()) == [0, 1, 2, 3, 4]


def test_each_fold_keeps_the_combination_proportions(full_table):
    whole = full_table["combination"].value_counts(normalize=True)
    per_fold = pd.crosstab(full_table["combination"], full_table["fold"], normalize="columns")
    assert per_fold.sub(whole, axis=0).abs().to_numpy().max() < 0.002
    sizes = full_table["fold"].value_counts()
    assert sizes.max() - sizes.min() <= 0.01 * len(full_table)


def test_prepare_prints_table_1(full_table, shared_data, tmp_path, capsys):
    assert main(["prepare", "--data-entry", str(shared_data / "cxr14-sample" / "Data_Entry_sample.csv"), "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "No Finding" in printed and "combinations" in printed


def test_the_printed_table_of_the_full_file(full_table):
    from clare_dist.cxr14 import format_counts_table

    text = format_counts_table(combination_counts(full_table))
    assert "No Finding   60,361" in text and "CaPaOt" in text and "26 combinations, 110,486 images" in text


def _write(path, rows, header=HEADER):
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def _rows(n_patients=10, per_patient=3):
    labels = ["No Finding", "Cardiomegaly", "Effusion|Mass", "Atelectasis|Effusion|Infiltration|Mass", "Pneumothorax"]
    rows = []
    for p in range(1, n_patients + 1):
        for f in range(per_patient):
            rows.append(f"{p:08d}_{f:03d}.png,{labels[(p + f) % len(labels)]},{f},{p},50,M,PA,2048,2048,0.143,0.143")
    return rows


def test_rows_with_more_than_three_findings_are_dropped_and_gzip_is_read(tmp_path):
    plain = _write(tmp_path / "Data_Entry_2017.csv", _rows())
    gz = tmp_path / "Data_Entry_2017.csv.gz"
    gz.write_bytes(gzip.compress(plain.read_bytes()))
    table = label_table(read_data_entry(gz))
    assert len(table) == 30 - 6
    row = table.set_index("image_index").loc["00000002_000.png"]
    assert row["combination"] == "PaPl" and row[["Ca", "Pa", "Pn", "Pl", "Ot"]].tolist() == [0, 1, 0, 1, 0]


def test_folds_are_a_pure_function_of_table_and_seed(tmp_path):
    raw = read_data_entry(_write(tmp_path / "d.csv", _rows(40, 2)))
    first, again, other = label_table(raw, seed=0), label_table(raw, seed=0), label_table(raw, seed=7)
    assert (first["fold"] == again["fold"]).all()
    assert not (first["fold"] == other["fold"]).all()


def test_missing_columns_are_named(tmp_path):
    path = _write(tmp_path / "bad.csv", ["a.png,No Finding,0"], header="Image Index,Finding Labels,Follow-up #")
    with pytest.raises(MetadataError, match="Patient ID"):
        read_data_entry(path)


def test_missing_file_and_duplicates_and_empty_cells(tmp_path):
    with pytest.raises(MetadataError, match="not found"):
        read_data_entry(tmp_path / "nope.csv")
    dup = _rows(2, 1) + _rows(2, 1)[:1]
    with pytest.raises(MetadataError, match="more than once"):
        read_data_entry(_write(tmp_path / "dup.csv", dup))
    with pytest.raises(MetadataError, match="line"):
        read_data_entry(_write(tmp_path / "empty.csv", ["a.png,,0,1,50,M,PA,1,1,0.1,0.1"]))


def test_prepare_reports_a_bad_file_without_a_traceback(tmp_path, capsys):
    path = _write(tmp_path / "bad.csv", ["a.png,No Finding"], header="Image Index,Finding Labels")
    assert main(["prepare", "--data-entry", str(path), "--out", str(tmp_path / "o")]) == 2
    assert "Patient ID" in capsys.readouterr().err


def test_fold_roles():
    split = fold_split(4)
    assert (split.test, split.validation, split.train) == (4, 0, (1, 2, 3))
    assert fold_split(0).train == (2, 3, 4)
    with pytest.raises(ValueError):
        fold_split(5)
    seen = [fold_split(k).test for k in range(5)]
    assert sorted(seen) == [0, 1, 2, 3, 4]
    assert np.all([fold_split(k).validation != k for k in range(5)])
