"""Sample sources: results files (global frame) back into the LiDAR frame, checked against the
nuScenes devkit's own Box transforms; the model path; the visualize() driver on a tiny dataset."""

import math
import numpy as np
import os
import cv2
import pytest
import torch
from nuscenes.utils.data_classes import Box
from pyquaternion import Quaternion

from detectron2.data import DatasetCatalog, MetadataCatalog

from d2_pillars.data.datasets import NUSCENES_CLASSES
from d2_pillars.data.display import ego_yaw_in_lidar, ground_truth_of
from d2_pillars.engine.visualize import (
    ModelPredictions,
    ResultsFilePredictions,
    SampleLoader,
    visualize,
)
from d2_pillars.evaluation.results_io import write_lyft_csv, write_nuscenes_results
from d2_pillars.structures import LiDARBoxes
from d2_pillars.visualization import save_samples
from d2_pillars.visualization.style import class_color

LYFT_CLASSES = ["car", "other_vehicle", "pedestrian", "bicycle", "truck", "bus", "motorcycle",
                "emergency_vehicle", "animal"]  # fmt: skip


def _pose(yaw, pitch=0.0, roll=0.0, t=(0.0, 0.0, 0.0)):
    m = np.eye(4)
    m[:3, :3] = Quaternion(axis=[0, 0, 1], angle=yaw).rotation_matrix @ (
        Quaternion(axis=[0, 1, 0], angle=pitch).rotation_matrix
        @ Quaternion(axis=[1, 0, 0], angle=roll).rotation_matrix
    )
    m[:3, 3] = t
    return m


def _record(tmp_path, lidar2ego, ego2global, boxes, labels, n_points=3000, seed=0):
    rng = np.random.default_rng(seed)
    pts = np.zeros((n_points, 5), np.float32)
    pts[:, :2] = rng.uniform(-30, 30, (n_points, 2))
    pts[:, 2] = -1.8
    path = str(tmp_path / f"lidar_{seed}.bin")
    pts.tofile(path)
    return {
        "dataset": "nuscenes",
        "sample_token": f"token{seed}",
        "scene_token": "scene",
        "timestamp": 1.0,
        "lidar_path": path,
        "lidar2ego": lidar2ego,
        "ego2global": ego2global,
        "sweeps": [],
        "gt_boxes": np.asarray(boxes, np.float32),
        "gt_names": [NUSCENES_CLASSES[i] if i >= 0 else "" for i in labels],
        "gt_labels": np.asarray(labels, np.int64),
    }


BOXES = np.array(
    [
        [10.0, 5.0, -1.0, 4.5, 1.9, 1.6, 0.3, 2.0, -1.0],
        [-12.0, -8.0, -0.8, 11.0, 2.8, 3.5, -2.7, 0.0, 0.0],
        [3.0, -15.0, -1.2, 0.7, 0.6, 1.8, 1.6, 0.5, 0.5],
    ]
)


def _devkit_global(box, lidar2ego, ego2global):
    """The devkit's chain LiDAR -> ego -> global with Box.rotate / Box.translate."""
    x, y, z, length, width, height, yaw, vx, vy = box
    b = Box([x, y, z], [width, length, height], Quaternion(axis=[0, 0, 1], angle=yaw),
            velocity=(vx, vy, 0.0))  # fmt: skip
    for m in (lidar2ego, ego2global):
        b.rotate(Quaternion(matrix=m[:3, :3]))
        b.translate(m[:3, 3])
    return b


def _assert_same_boxes(got: LiDARBoxes, expected, atol=1e-3, velocity=True):
    t = got.tensor.numpy()
    np.testing.assert_allclose(t[:, :6], expected[:, :6], atol=atol)
    dyaw = (t[:, 6] - expected[:, 6] + math.pi) % (2 * math.pi) - math.pi
    np.testing.assert_allclose(dyaw, 0.0, atol=atol)
    if velocity:
        np.testing.assert_allclose(t[:, 7:9], expected[:, 7:9], atol=atol)


def test_nuscenes_json_back_to_lidar_frame(tmp_path):
    # nuScenes-like mounting (LiDAR x to the vehicle's right) and a tilted, far-away ego pose
    lidar2ego = _pose(-math.pi / 2, t=(0.9, 0.0, 1.8))
    ego2global = _pose(2.1, pitch=0.02, roll=-0.01, t=(400.0, 1100.0, 5.0))
    rec = _record(tmp_path, lidar2ego, ego2global, BOXES, [0, 3, 7])
    results = {rec["sample_token"]: []}
    for box, label, score in zip(BOXES, [0, 3, 7], [0.9, 0.6, 0.4]):
        g = _devkit_global(box, lidar2ego, ego2global)
        results[rec["sample_token"]].append({
            "sample_token": rec["sample_token"], "translation": g.center.tolist(),
            "size": g.wlh.tolist(), "rotation": g.orientation.elements.tolist(),
            "velocity": g.velocity[:2].tolist(), "detection_name": NUSCENES_CLASSES[label],
            "detection_score": score, "attribute_name": "",
        })  # fmt: skip
    path = str(tmp_path / "results_nusc.json")
    write_nuscenes_results(path, results)
    preds = ResultsFilePredictions(path, NUSCENES_CLASSES)
    assert preds.dataset_type == "nuscenes"
    out = preds(rec)
    # tilted ego: the devkit box is no longer yaw-only; its heading is what comes back
    _assert_same_boxes(out["boxes"], BOXES, atol=2e-3)
    np.testing.assert_array_equal(out["labels"], [0, 3, 7])
    np.testing.assert_allclose(out["scores"], [0.9, 0.6, 0.4])
    # a sample the file does not list: no predictions (and a warning), not an error
    other = dict(rec, sample_token="unknown")
    assert len(preds(other)["boxes"]) == 0


def test_lyft_csv_back_to_lidar_frame(tmp_path):
    lidar2ego = _pose(0.01, t=(1.3, 0.0, 1.9))
    ego2global = _pose(-0.7, t=(2000.0, -300.0, -20.0))
    boxes7 = BOXES[:, :7]
    rec = _record(tmp_path, lidar2ego, ego2global, boxes7, [0, 5, 2])
    names = [LYFT_CLASSES[i] for i in (0, 5, 2)]
    rows = []
    for box, name in zip(BOXES, names):
        g = _devkit_global(box, lidar2ego, ego2global)
        rows.append({"sample_token": rec["sample_token"], "translation": g.center.tolist(),
                     "size": g.wlh.tolist(), "rotation": g.orientation.elements.tolist(),
                     "name": name, "score": 0.5})  # fmt: skip
    path = str(tmp_path / "sub.csv")
    write_lyft_csv(path, {rec["sample_token"]: rows})
    preds = ResultsFilePredictions(path, LYFT_CLASSES)
    assert preds.dataset_type == "lyft"
    out = preds(rec)
    _assert_same_boxes(out["boxes"], boxes7, velocity=False)
    np.testing.assert_array_equal(out["labels"], [0, 5, 2])


def test_results_with_unknown_class_is_an_error(tmp_path):
    path = str(tmp_path / "r.csv")
    write_lyft_csv(
        path,
        {
            "t": [
                {
                    "sample_token": "t",
                    "translation": [0, 0, 0],
                    "size": [1, 1, 1],
                    "rotation": [1, 0, 0, 0],
                    "name": "spaceship",
                    "score": 0.5,
                }
            ]
        },
    )
    with pytest.raises(ValueError, match="spaceship"):
        ResultsFilePredictions(path, LYFT_CLASSES)


def test_ground_truth_and_ego_yaw(tmp_path):
    rec = _record(tmp_path, _pose(-math.pi / 2), np.eye(4), BOXES, [0, -1, 7])
    boxes, labels = ground_truth_of(rec)
    assert len(boxes) == 2 and labels.tolist() == [0, 7]
    boxes, labels = ground_truth_of(rec, include_ignored=True)
    assert labels.tolist() == [0, -1, 7]
    # LiDAR x to the right of the vehicle: the vehicle heads along LiDAR +y
    assert ego_yaw_in_lidar(rec["lidar2ego"]) == pytest.approx(math.pi / 2)
    assert ego_yaw_in_lidar(None) == 0.0


def test_sample_loader_and_bev_png(tmp_path):
    rec = _record(tmp_path, _pose(0.0), np.eye(4), BOXES, [0, 3, 7])
    loader = SampleLoader([rec], NUSCENES_CLASSES, num_sweeps=0)
    sample = loader[-1]
    assert sample.points.shape == (3000, 4) and sample.pred_boxes is None
    paths = save_samples(loader, [0], str(tmp_path / "out"), mode="bev", size=256,
                         bev_range=(-40, -40, 40, 40))  # fmt: skip
    assert [os.path.basename(p) for p in paths] == ["0000_token0_bev.png"]
    img = cv2.imread(paths[0])[..., ::-1]
    assert img.shape == (256, 256, 3)
    assert (np.abs(img.astype(int) - class_color(3)).sum(-1) == 0).sum() > 20  # the bus
    with pytest.raises(IndexError):
        loader[1]


@pytest.fixture
def tiny_dataset(tmp_path):
    name = "vis_test_tiny_nus"
    lidar2ego = _pose(-math.pi / 2, t=(0.9, 0.0, 1.8))
    ego2global = _pose(0.5, t=(100.0, 200.0, 0.0))
    recs = [_record(tmp_path, lidar2ego, ego2global, BOXES, [0, 3, 7], seed=s) for s in (0, 1)]
    DatasetCatalog.register(name, lambda: recs)
    MetadataCatalog.get(name).set(thing_classes=list(NUSCENES_CLASSES), evaluator_type="nuscenes")
    yield name, recs
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def test_visualize_results_file_bev(tiny_dataset, tmp_path):
    name, recs = tiny_dataset
    results = {}
    for rec in recs:
        lidar2global = rec["ego2global"] @ rec["lidar2ego"]
        g = LiDARBoxes(torch.from_numpy(BOXES).float()).to_global_records(lidar2global)
        results[rec["sample_token"]] = [
            {"sample_token": rec["sample_token"], "translation": g["translation"][i].tolist(),
             "size": g["size"][i].tolist(), "rotation": g["rotation"][i].tolist(),
             "velocity": g["velocity"][i].tolist(), "detection_name": "car",
             "detection_score": s, "attribute_name": ""}
            for i, s in enumerate([0.9, 0.2, 0.8])
        ]  # fmt: skip
    path = str(tmp_path / "results_nusc.json")
    write_nuscenes_results(path, results)
    out = visualize(name, indices=[1], results_file=path, save_dir=str(tmp_path / "vis"),
                    mode="bev", size=320, num_sweeps=0)  # fmt: skip
    assert [os.path.basename(p) for p in out] == ["0001_token1_bev.png"]
    with pytest.raises(IndexError, match="out of range"):
        visualize(name, indices=[5], save_dir=str(tmp_path / "vis"), mode="bev")
    with pytest.raises(KeyError, match="not registered"):
        visualize("no_such_dataset", save_dir=str(tmp_path / "vis"))


def test_model_predictions_keep_points(tiny_dataset):
    from d2_pillars.engine import load_config

    name, recs = tiny_dataset
    cfg = load_config("configs/synthetic/pointpillars_secfpn_cpu.yaml", ["INPUT.NUM_SWEEPS", "0"])
    preds = ModelPredictions(cfg)  # untrained: the point is the plumbing, not the boxes
    out = preds(recs[0])
    assert isinstance(out["boxes"], LiDARBoxes)
    assert out["labels"].shape == out["scores"].shape == (len(out["boxes"]),)
    r = cfg.INPUT.POINT_CLOUD_RANGE
    pts = out["points"]
    assert pts.shape[1] == len(cfg.INPUT.POINT_FEATURES) and len(pts) > 0
    assert (pts[:, 0] > r[0]).all() and (pts[:, 0] < r[3]).all()  # the model's range filter
    loader = SampleLoader(recs, NUSCENES_CLASSES, preds)
    sample = loader[0]
    assert sample.point_features == tuple(cfg.INPUT.POINT_FEATURES)
    assert sample.pred_scores is not None
