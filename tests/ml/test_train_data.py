"""Training data preparation: SPIDER classes, synthetic label mapping, patient-level split."""

from __future__ import annotations

import numpy as np

from cds.pipeline.segment import CANAL, DISC, VERTEBRA
from cds.train.data import map_spider_mask, split_patients, synth_class_table
from cds.train.metrics import dice, dice_per_class, summarise
from cds.train.synth_data import central_indices, lookup


def test_spider_mask_values_map_to_network_classes() -> None:
    mask = np.array([[0, 29], [76, 150]], dtype=np.uint8)
    assert map_spider_mask(mask).tolist() == [[0, DISC], [VERTEBRA, CANAL]]


def test_synthetic_labels_follow_spider_conventions() -> None:
    table = synth_class_table(
        {
            1: "vertebra_L1",
            9: "vertebra_S1",
            21: "disc_L5-S1",
            31: "posterior_elements_L4",
            39: "posterior_elements_S1",
            51: "facets_L3",
            70: "dural_sac",
            71: "cauda_equina",
            72: "spinal_cord",
            73: "epidural_fat",
            80: "muscle",
        }
    )
    assert table == {1: VERTEBRA, 21: DISC, 31: VERTEBRA, 51: VERTEBRA, 70: CANAL, 71: CANAL, 72: CANAL}
    assert lookup(table)[np.array([9, 21, 73])].tolist() == [0, DISC, 0]


def test_split_is_patient_level_deterministic_and_disjoint() -> None:
    patients = [f"{i:03d}" for i in range(29)]
    train, held = split_patients(patients, 6, seed=0)
    assert len(held) == 6 and not set(train) & set(held)
    assert sorted(train + held) == patients
    assert split_patients(patients, 6, seed=0) == (train, held)


def test_central_indices_centre_on_the_largest_canal() -> None:
    labels = np.zeros((20, 4, 4), dtype=np.uint8)
    for k, area in enumerate([0] * 5 + [1, 2, 4, 8, 16, 8, 4, 2, 1] + [0] * 6):
        labels[k].flat[:area] = CANAL
    assert central_indices(labels, labels == CANAL, 5) == [7, 8, 9, 10, 11]


def test_dice_figures() -> None:
    a = np.array([1, 1, 0, 0], bool)
    b = np.array([1, 0, 0, 0], bool)
    assert dice(a, b) == 2 / 3
    assert dice(np.zeros(3, bool), np.zeros(3, bool)) == 1.0
    per = dice_per_class(np.array([1, 2, 3, 0]), np.array([1, 2, 0, 0]))
    assert per == {"disc": 1.0, "vertebra": 1.0, "canal": 0.0}
    assert summarise({"p": per})["mean"] == 2 / 3
