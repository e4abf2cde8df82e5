import numpy as np
import pytest

from clare_dist import labels
from clare_dist.labels import (
    CLASSES,
    COMBINATIONS,
    NO_FINDING,
    LabelError,
    combination_name,
    combination_vector,
    describe_classes,
    findings_vector,
    parse_finding_labels,
)


def test_fourteen_findings_grouped_into_five_classes_as_the_paper():
    assert len(labels.FINDINGS) == 14
    assert labels.CLASS_FINDINGS["Ca"] == ("Cardiomegaly",)
    assert set(labels.CLASS_FINDINGS["Pa"]) == {
        "Infiltration", "Fibrosis", "Atelectasis", "Mass", "Nodule", "Pneumonia", "Consolidation", "Edema",
    }
    assert labels.CLASS_FINDINGS["Pn"] == ("Pneumothorax",)
    assert set(labels.CLASS_FINDINGS["Pl"]) == {"Effusion", "Pleural_Thickening"}
    assert set(labels.CLASS_FINDINGS["Ot"]) == {"Hernia", "Emphysema"}


def test_twenty_six_combinations_in_canonical_order():
    assert len(COMBINATIONS) == 26 == len(set(COMBINATIONS))
    assert COMBINATIONS[:6] == (NO_FINDING, "Ca", "Pa", "Pn", "Pl", "Ot")
    assert COMBINATIONS[6] == "CaPa" and COMBINATIONS[-1] == "PnPlOt"
    sizes = [int(combination_vector(n).sum()) for n in COMBINATIONS]
    assert sizes == sorted(sizes) and max(sizes) == 3
    assert set(COMBINATIONS) == set(labels.TABLE1_COUNTS)
    assert sum(labels.TABLE1_COUNTS.values()) == 110_486


@pytest.mark.parametrize("name", COMBINATIONS)
def test_name_and_vector_round_trip(name):
    assert combination_name(combination_vector(name)) == name


def test_names_outside_the_26_and_any_code_order():
    assert combination_name([1, 0, 1, 1, 1]) == "CaPnPlOt"
    assert combination_vector("PlCa").tolist() == [1, 0, 0, 1, 0]
    assert combination_name(np.zeros(5, int)) == NO_FINDING


@pytest.mark.parametrize("bad", ["Xx", "CaCa", "C", "", "cardio"])
def test_bad_combination_names_are_rejected(bad):
    with pytest.raises(LabelError):
        combination_vector(bad)


def test_bad_vectors_are_rejected():
    with pytest.raises(LabelError):
        combination_name([1, 0, 2, 0, 0])
    with pytest.raises(LabelError):
        combination_name([1, 0, 0])


def test_finding_labels_parse_in_any_order():
    assert parse_finding_labels("No Finding") == ()
    assert parse_finding_labels("Infiltration|Pneumothorax|Atelectasis") == ("Atelectasis", "Infiltration", "Pneumothorax")
    assert findings_vector(parse_finding_labels("Cardiomegaly|Emphysema")).tolist() == [1, 0, 0, 0, 1]
    # Two Pa findings make one class.
    assert findings_vector(parse_finding_labels("Mass|Nodule")).tolist() == [0, 1, 0, 0, 0]


@pytest.mark.parametrize("bad", ["Covid", "Mass|Tumour", ""])
def test_unknown_findings_name_what_is_known(bad):
    with pytest.raises(LabelError, match="finding|Finding"):
        parse_finding_labels(bad)


def test_class_phrases_for_explanations():
    assert describe_classes(["Ca", "Pl"]) == "cardiac and pleural lesions"
    assert describe_classes(["Pa"]) == "parenchymal lesions"
    assert describe_classes(["Pn"]) == "pneumothorax"
    assert describe_classes(["Ca", "Pn", "Pl"]) == "cardiac and pleural lesions and pneumothorax"
    assert describe_classes(["Ca", "Pa", "Ot"]) == "cardiac, parenchymal and other lesions"
    assert CLASSES == ("Ca", "Pa", "Pn", "Pl", "Ot")
