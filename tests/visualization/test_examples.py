"""Best / worst evaluation examples: per-sample matching counts and the ranking of the images."""

import numpy as np
import cv2
import pytest
import torch

from d2_pillars.structures import LiDARBoxes
from d2_pillars.visualization.examples import match_by_center_distance, save_bev_examples

CLASSES = ["car", "truck", "trailer", "bus", "construction_vehicle", "bicycle", "motorcycle",
           "pedestrian", "traffic_cone", "barrier"]  # fmt: skip
RANGE = (-40.0, -40.0, 40.0, 40.0)
GT = np.array(
    [
        [8.0, -12.0, -1.0, 4.6, 1.9, 1.7, 0.6],  # car
        [-15.0, -5.0, -0.5, 11.0, 2.9, 3.4, -1.1],  # bus
        [-20.0, -22.0, -1.0, 0.8, 0.7, 1.8, 2.5],  # pedestrian (small)
    ],
    dtype=np.float32,
)
GT_LABELS = np.array([0, 3, 7])


def _ground_points(n, seed=0):
    rng = np.random.default_rng(seed)
    xy = rng.uniform(-40, 40, size=(n, 2))
    z = rng.uniform(-2.0, -1.5, size=(n, 1))
    lag = rng.choice([0.0, 0.05, 0.1, 0.45], size=(n, 1))
    return np.concatenate([xy, z, lag], axis=1).astype(np.float32)


def test_match_by_center_distance_counts():
    gt = LiDARBoxes(torch.tensor([[0, 0, 0, 4, 2, 1.5, 0], [10, 0, 0, 4, 2, 1.5, 0],
                                  [20, 0, 0, 1, 1, 1, 0]], dtype=torch.float32))  # fmt: skip
    gl = np.array([0, 0, 7])
    pred = np.array([[0.5, 0, 0, 4, 2, 1.5, 0],  # TP (0.5 m)
                     [10, 3, 0, 4, 2, 1.5, 0],  # 3 m away: FP, GT 1 missed
                     [20.2, 0, 0, 1, 1, 1, 0],  # right place, wrong class: FP
                     [0.2, 0, 0, 4, 2, 1.5, 0]])  # duplicate of GT 0: FP  # fmt: skip
    pl = np.array([0, 0, 0, 0])
    res = match_by_center_distance(gt, gl, pred, pl, np.array([0.9, 0.9, 0.9, 0.8]))
    assert (res["tp"], res["fp"], res["fn"]) == (1, 3, 2)
    assert res["f1"] == pytest.approx(2 / (2 + 3 + 2))
    # score threshold removes the duplicate
    res = match_by_center_distance(gt, gl, pred, pl, np.array([0.9, 0.9, 0.9, 0.1]))
    assert (res["tp"], res["fp"], res["fn"]) == (1, 2, 2)
    assert match_by_center_distance(None, None, None, None, None)["f1"] == 1.0


def test_save_bev_examples_ranks_worst_and_best(tmp_path):
    pts = _ground_points(2000)
    good = {"boxes": GT.copy(), "labels": GT_LABELS, "scores": np.full(3, 0.9)}
    half = {"boxes": GT[:1].copy(), "labels": GT_LABELS[:1], "scores": np.array([0.9])}
    empty = {"boxes": np.zeros((0, 7)), "labels": np.zeros(0, int), "scores": np.zeros(0)}
    samples = [
        {"points": pts, "gt_boxes": GT, "gt_labels": GT_LABELS, "sample_token": tok}
        for tok in ("tok_half", "tok_good", "tok_empty")
    ]
    written = save_bev_examples(
        samples, [half, good, empty], str(tmp_path), CLASSES, num_best=1, num_worst=1, size=256,
        bev_range=RANGE,
    )  # fmt: skip
    assert [(w["rank"], w["sample_token"]) for w in written] == [
        ("worst", "tok_empty"),
        ("best", "tok_good"),
    ]
    assert written[0]["score"] == 0.0 and written[1]["score"] == 1.0
    for w in written:
        img = cv2.imread(w["path"])
        assert img is not None and img.shape == (256, 256, 3)
    with pytest.raises(ValueError, match="predictions"):
        save_bev_examples(samples, [good], str(tmp_path), CLASSES)
