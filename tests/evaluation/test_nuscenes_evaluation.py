"""NuScenesEvaluator on the synthetic nuScenes set, against the official devkit."""

import json
import math
import numpy as np
import os
import pytest
import torch
from nuscenes.eval.common.utils import quaternion_yaw
from nuscenes.utils.data_classes import Box
from pyquaternion import Quaternion

from detectron2.data import DatasetCatalog, MetadataCatalog

from d2_pillars.data.datasets.nuscenes import NUSCENES_CLASSES
from d2_pillars.evaluation import (
    NuScenesEvaluator,
    ResultsFileError,
    evaluate_nuscenes_results,
    merge_predictions,
)
from d2_pillars.structures import LiDARBoxes

from evaluator_io import evaluator_input, prediction_instances, run_evaluator

VAL, TRAIN = "_test_eval_nusc_mini_val", "_test_eval_nusc_mini_train"
RANGES = {"car": 50, "truck": 50, "bus": 50, "trailer": 50, "construction_vehicle": 50}
RANGES.update(
    {"pedestrian": 40, "motorcycle": 40, "bicycle": 40, "traffic_cone": 30, "barrier": 30}
)


@pytest.fixture(scope="module")
def nusc(tmp_path_factory, register_small_synthetic):
    return register_small_synthetic(
        "nuscenes", tmp_path_factory.mktemp("nusc"), VAL, TRAIN, keyframes_per_scene=4,
        azimuth_steps=256,
    )  # fmt: skip


def gt_as_predictions(dataset_name, yaw_offset=0.0, limit=None):
    """(inputs, outputs) pairs with the ground truth (boxes with points) as predictions."""
    pairs = []
    for d in DatasetCatalog.get(dataset_name)[:limit]:
        keep = (d["gt_labels"] >= 0) & (d["num_lidar_pts"] + d["num_radar_pts"] > 0)
        boxes = d["gt_boxes"][keep].copy()
        boxes[:, 6] += yaw_offset
        inst = prediction_instances(boxes, np.ones(len(boxes)), d["gt_labels"][keep])
        pairs.append((evaluator_input(d), inst))
    return pairs


def classes_in_gt(dataset_name):
    """Classes the devkit keeps in the ground truth (within range, with points)."""
    present = set()
    for d in DatasetCatalog.get(dataset_name):
        global_boxes = LiDARBoxes(torch.as_tensor(d["gt_boxes"])).to_global_records(
            d["ego2global"] @ d["lidar2ego"]
        )
        dist = np.linalg.norm(global_boxes["translation"][:, :2] - d["ego2global"][:2, 3], axis=1)
        for name, r, pts in zip(d["gt_names"], dist, d["num_lidar_pts"] + d["num_radar_pts"]):
            if name and pts > 0 and r < RANGES[name]:
                present.add(name)
    return present


def test_ground_truth_scores_perfectly(nusc, tmp_path):
    out = str(tmp_path / "eval")
    res = run_evaluator(NuScenesEvaluator(VAL, out), gt_as_predictions(VAL))["nuscenes"]
    # The generator puts every class, with points and within range, in every scene (a class
    # without ground truth would score AP 0 and TP errors 1).
    assert classes_in_gt(VAL) == set(NUSCENES_CLASSES)
    summary = json.load(open(os.path.join(out, "metrics_summary.json")))
    for name in NUSCENES_CLASSES:
        assert res[f"AP-{name}"] >= 0.99, name
        errors = summary["label_tp_errors"][name]
        assert errors["trans_err"] <= 0.01 and errors["scale_err"] <= 0.01, name
        if name != "traffic_cone":  # the devkit does not score a cone's orientation (NaN)
            assert errors["orient_err"] <= 0.01, name
    # mAP and the TP errors are the devkit's means over all 10 classes.
    assert res["mAP"] >= 0.99
    assert res["mATE"] <= 0.01 and res["mASE"] <= 0.01 and res["mAOE"] <= 0.01
    assert res["mAP"] == pytest.approx(np.mean([res[f"AP-{c}"] for c in NUSCENES_CLASSES]))
    assert res["mAP"] == pytest.approx(summary["mean_ap"]) and res["NDS"] == summary["nd_score"]
    assert set(res) >= {"mAP", "NDS", "mATE", "mASE", "mAOE", "mAVE", "mAAE"}
    assert os.path.isfile(os.path.join(out, "metrics_details.json"))

    # The written submission: every sample, LiDAR-only meta, valid attributes, no NaN.
    results_path = os.path.join(out, "results_nusc.json")
    data = json.load(open(results_path))
    assert data["meta"]["use_lidar"] is True and data["meta"]["use_camera"] is False
    assert set(data["results"]) == {d["sample_token"] for d in DatasetCatalog.get(VAL)}
    boxes = [b for v in data["results"].values() for b in v]
    assert all(np.isfinite(b["velocity"]).all() and len(b["velocity"]) == 2 for b in boxes)
    assert {b["attribute_name"] for b in boxes if b["detection_name"] == "barrier"} == {""}

    # Scoring the file again (no model) gives the same numbers.
    again = evaluate_nuscenes_results(results_path, VAL, str(tmp_path / "again"))["nuscenes"]
    assert again == pytest.approx(res)


def test_yaw_error_is_measured(nusc, tmp_path):
    out = str(tmp_path / "eval")
    res = run_evaluator(NuScenesEvaluator(VAL, out), gt_as_predictions(VAL, yaw_offset=math.pi / 2))
    errors = json.load(open(os.path.join(out, "metrics_summary.json")))["label_tp_errors"]
    for name in set(NUSCENES_CLASSES) - {"traffic_cone"}:
        # Barrier (period pi): pi/2 is the largest error there too.
        assert errors[name]["orient_err"] == pytest.approx(math.pi / 2, abs=0.01), name
        assert res["nuscenes"][f"AP-{name}"] >= 0.99  # matching is by centre distance
    assert res["nuscenes"]["mAOE"] == pytest.approx(math.pi / 2, abs=0.01)


def test_missing_samples_is_a_clear_error(nusc):
    pairs = gt_as_predictions(VAL)
    with pytest.raises(ResultsFileError, match=r"1 samples of the split are missing"):
        run_evaluator(NuScenesEvaluator(VAL), pairs[:-1])


def test_results_file_of_another_split(nusc, tmp_path):
    path = str(tmp_path / "train_results.json")
    with pytest.raises(ResultsFileError, match="4 samples of the split are missing"):
        run_evaluator(NuScenesEvaluator(TRAIN, str(tmp_path)), [])  # nothing processed
    assert not os.path.exists(tmp_path / "results_nusc.json")  # no file for a wrong split
    ev = NuScenesEvaluator(TRAIN, str(tmp_path))
    for inp, inst in gt_as_predictions(TRAIN):
        ev.process([inp], [{"instances": inst}])
    results = merge_predictions([ev._predictions])
    json.dump({"meta": {"use_lidar": True}, "results": results}, open(path, "w"))
    with pytest.raises(ResultsFileError, match=r"train_results.json.*split 'mini_val'"):
        evaluate_nuscenes_results(path, VAL, str(tmp_path / "out"))


def test_empty_results_give_zero_metrics(nusc, tmp_path):
    pairs = [
        (inp, prediction_instances(np.zeros((0, 9)), [], [])) for inp, _ in gt_as_predictions(VAL)
    ]
    res = run_evaluator(NuScenesEvaluator(VAL, str(tmp_path)), pairs)["nuscenes"]
    assert res["mAP"] == 0.0 and res["NDS"] == 0.0 and res["AP-car"] == 0.0
    data = json.load(open(tmp_path / "results_nusc.json"))
    assert len(data["results"]) == len(pairs) and not any(data["results"].values())


def test_merge_of_two_ranks(nusc):
    pairs = gt_as_predictions(VAL)
    single = NuScenesEvaluator(VAL)
    ranks = [NuScenesEvaluator(VAL), NuScenesEvaluator(VAL)]
    for i, (inp, inst) in enumerate(pairs):
        single.process([inp], [{"instances": inst}])
        ranks[i % 2].process([inp], [{"instances": inst}])
    expected = merge_predictions([single._predictions])
    assert len(expected) == len(pairs)
    gathered = [ranks[0]._predictions, ranks[1]._predictions]
    assert merge_predictions(gathered) == expected
    assert merge_predictions(gathered[::-1]) == expected
    # A sample given twice (padded sampler) is kept once.
    assert merge_predictions(gathered + [ranks[0]._predictions[:1]]) == expected
    assert single._gathered_results() == expected


# ----------------------------------------------------------------------------- conversion
@pytest.fixture(scope="module")
def fake_split():
    name = "_test_eval_nusc_metadata_only"
    if "thing_classes" not in MetadataCatalog.get(name).as_dict():
        MetadataCatalog.get(name).set(
            thing_classes=list(NUSCENES_CLASSES),
            dataset_root="/nonexistent",
            version="v1.0-mini",
            eval_split="mini_val",
            evaluator_type="nuscenes",
        )
    return name


def _pose(yaw, pitch, roll, t):
    q = Quaternion(axis=[0, 0, 1], angle=yaw) * Quaternion(axis=[0, 1, 0], angle=pitch)
    q = q * Quaternion(axis=[1, 0, 0], angle=roll)
    m = np.eye(4)
    m[:3, :3], m[:3, 3] = q.rotation_matrix, t
    return m


def test_conversion_matches_devkit_box_chain(fake_split):
    rng = np.random.default_rng(0)
    n = 200
    boxes = np.concatenate(
        [
            rng.uniform(-25, 25, (n, 2)),
            rng.uniform(-2, 1, (n, 1)),
            rng.uniform(0.5, 6, (n, 3)),
            rng.uniform(-np.pi, np.pi, (n, 1)),
            rng.normal(0, 3, (n, 2)),
        ],
        axis=1,
    )
    lidar2ego = _pose(0.03, 0.01, -0.02, [0.9, 0.0, 1.8])
    ego2global = _pose(2.1, 0.02, 0.015, [612.3, 1642.8, 0.0])
    ev = NuScenesEvaluator(fake_split)
    inst = prediction_instances(boxes, rng.random(n), np.zeros(n))  # all cars (range 50 m)
    ev.process(
        [{"sample_token": "s", "lidar2ego": torch.as_tensor(lidar2ego), "ego2global": ego2global}],
        [{"instances": inst}],
    )
    out = {round(b["detection_score"], 6): b for b in ev._predictions[0][1]}
    assert len(out) == n
    boxes32 = inst.pred_boxes3d.tensor.double().numpy()
    for box, score in zip(boxes32, inst.scores.double().numpy()):
        ref = Box(
            box[0:3],
            [box[4], box[3], box[5]],
            Quaternion(axis=[0, 0, 1], angle=box[6]),
            velocity=(box[7], box[8], 0.0),
        )
        ref.rotate(Quaternion(matrix=lidar2ego[:3, :3]))
        ref.translate(lidar2ego[:3, 3])
        ref.rotate(Quaternion(matrix=ego2global[:3, :3]))
        ref.translate(ego2global[:3, 3])
        got = out[round(float(score), 6)]
        np.testing.assert_allclose(got["translation"], ref.center, atol=1e-3)
        np.testing.assert_allclose(got["size"], ref.wlh, atol=1e-5)
        np.testing.assert_allclose(got["velocity"], ref.velocity[:2], atol=1e-4)
        diff = quaternion_yaw(Quaternion(got["rotation"])) - quaternion_yaw(ref.orientation)
        assert abs((diff + np.pi) % (2 * np.pi) - np.pi) < 1e-5
        speed = np.linalg.norm(ref.velocity[:2])
        assert got["attribute_name"] == ("vehicle.moving" if speed > 0.2 else "vehicle.parked")


def test_range_filter_cap_and_attributes(fake_split):
    ego2global = _pose(0.7, 0.0, 0.0, [300.0, 900.0, 0.0])
    lidar2ego = _pose(0.0, 0.0, 0.0, [0.0, 0.0, 1.8])
    classes = list(NUSCENES_CLASSES)
    rows, labels, expect_kept = [], [], []
    for name, r in RANGES.items():
        for dist, kept in ((r - 0.05, True), (r + 0.05, False)):
            angle = 1.0 + len(rows)
            rows.append([dist * math.cos(angle), dist * math.sin(angle), 0, 4, 2, 1.5, 0, 1, 0])
            labels.append(classes.index(name))
            expect_kept.append(kept)
    ev = NuScenesEvaluator(fake_split)
    scores = np.linspace(0.9, 0.1, len(rows))
    ev.process(
        [{"sample_token": "s", "lidar2ego": lidar2ego, "ego2global": ego2global}],
        [{"instances": prediction_instances(rows, scores, labels)}],
    )
    kept = ev._predictions[0][1]
    assert [b["detection_score"] for b in kept] == pytest.approx(scores[expect_kept].tolist())

    # At most 500 boxes, the highest scores, in descending order.
    rng = np.random.default_rng(1)
    many = np.concatenate(
        [rng.uniform(-10, 10, (600, 2)), np.ones((600, 4)), np.zeros((600, 3))], 1
    )
    many_scores = rng.random(600)
    ev.reset()
    ev.process(
        [{"sample_token": "t", "lidar2ego": lidar2ego, "ego2global": ego2global}],
        [{"instances": prediction_instances(many, many_scores, np.zeros(600))}],
    )
    got = [b["detection_score"] for b in ev._predictions[0][1]]
    assert got == pytest.approx(np.sort(many_scores.astype(np.float32))[::-1][:500].tolist())

    # Attributes from the global speed; 7-value boxes get velocity 0 (never NaN).
    attr_cases = [
        ("car", 1.0, "vehicle.moving"),
        ("car", 0.1, "vehicle.parked"),
        ("bus", 0.1, "vehicle.stopped"),
        ("bicycle", 0.5, "cycle.with_rider"),
        ("motorcycle", 0.0, "cycle.without_rider"),
        ("pedestrian", 0.3, "pedestrian.moving"),
        ("pedestrian", 0.15, "pedestrian.standing"),
        ("traffic_cone", 2.0, ""),
        ("barrier", 0, ""),
    ]
    rows = [[5.0 + i, 0, 0, 1, 1, 1, 0, speed, 0] for i, (_, speed, _) in enumerate(attr_cases)]
    labels = [classes.index(c) for c, _, _ in attr_cases]
    ev.reset()
    ev.process(
        [{"sample_token": "u", "lidar2ego": lidar2ego, "ego2global": ego2global}],
        [{"instances": prediction_instances(rows, np.linspace(1, 0.5, len(rows)), labels)}],
    )
    assert [b["attribute_name"] for b in ev._predictions[0][1]] == [a for _, _, a in attr_cases]
    ev.reset()
    ev.process(
        [{"sample_token": "v", "lidar2ego": lidar2ego, "ego2global": ego2global}],
        [{"instances": prediction_instances(np.array(rows)[:, :7], np.ones(len(rows)), labels)}],
    )
    assert all(b["velocity"] == [0.0, 0.0] for b in ev._predictions[0][1])
    with pytest.raises(ValueError, match="pred_classes out of range"):
        ev.process(
            [{"sample_token": "w", "lidar2ego": lidar2ego, "ego2global": ego2global}],
            [{"instances": prediction_instances(np.array(rows)[:1], [1.0], [10])}],
        )
