"""Reliability end to end: bad input gets a clear error (naming the file and the fix) or a
documented, warned drop; writes are atomic and respect the umask; loading never runs code.

The malformed-record fuzz is ``tests/data/test_fuzz_mapper.py``; the kill-and-``--resume`` run is
``tests/engine/test_train_net.py::test_resume_after_kill_continues_schedule``.
"""

import ast
import contextlib
import glob
import importlib.util
import json
import logging
import math
import numpy as np
import os
import pickle
import re
import stat
import subprocess
import sys
import pytest
import torch
from torch import nn

from detectron2.data import DatasetCatalog
from detectron2.modeling import build_model
from detectron2.structures import Instances

from d2_pillars.checkpoint import BoxConventionMismatchError, PillarsCheckpointer
from d2_pillars.checkpoint import checkpointer as checkpointer_module
from d2_pillars.data import register_nuscenes
from d2_pillars.data.datasets import (
    LYFT_SPEC,
    NUSCENES_SPEC,
    InfoFileError,
    create_infos,
    load_infos,
    save_infos,
)
from d2_pillars.data.mapper import PointCloudMapper, SampleRecordError
from d2_pillars.data.points import PointFileError, load_lidar_file, load_points
from d2_pillars.engine.defaults import load_config
from d2_pillars.evaluation import (
    LyftEvaluator,
    ResultsFileError,
    evaluate_lyft_results,
    evaluate_nuscenes_results,
    load_nuscenes_results,
    write_lyft_csv,
    write_lyft_results,
    write_nuscenes_results,
)
from d2_pillars.structures import BOX_CONVENTION_VERSION, LiDARBoxes
from d2_pillars.synthetic import make_synthetic_lyft, make_synthetic_nuscenes
from d2_pillars.utils import file_io
from d2_pillars.utils.file_io import atomic_open

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs", "synthetic", "pointpillars_secfpn_cpu.yaml")
LYFT_BAD_FILE = "host-a011_lidar1_1233090652702363606.bin"


def _messages(records, level=logging.WARNING):
    return [r.getMessage() for r in records if r.levelno >= level]


def _pose(yaw, t):
    m = np.eye(4)
    m[:2, :2] = [[math.cos(yaw), -math.sin(yaw)], [math.sin(yaw), math.cos(yaw)]]
    m[:3, 3] = t
    return m


def _cloud(rng, n, spread=20.0):
    return np.c_[
        rng.uniform(-spread, spread, (n, 2)), rng.uniform(-2, 0.5, n), rng.uniform(0, 255, n),
        rng.integers(0, 32, n),
    ].astype(np.float32)  # fmt: skip


def _record(folder, rng, n=200, sweeps=2):
    key = str(folder / "key.bin")
    _cloud(rng, n).tofile(key)
    rec = {
        "sample_token": "sample-0",
        "timestamp": 5.0,
        "lidar_path": key,
        "lidar2ego": _pose(0.0, [1.0, 0.0, 1.8]),
        "ego2global": _pose(0.3, [300.0, 900.0, 0.0]),
        "sweeps": [],
        "gt_boxes": np.array(
            [[2.0, 3.0, -1.0, 4.2, 1.9, 1.6, 0.4, 1.0, 0.0],
             [-5.0, 1.0, -1.0, 0.8, 0.7, 1.8, -1.0, 0.0, 0.0],
             [8.0, -6.0, -1.0, 0.5, 2.4, 1.0, 2.0, 0.0, 0.0]], np.float32),  # fmt: skip
        "gt_names": ["car", "pedestrian", ""],
        "gt_labels": np.array([0, 8, -1], np.int64),
        "num_lidar_pts": np.array([30, 5, 2], np.int64),
    }
    for i in range(sweeps):
        path = str(folder / f"sweep{i}.bin")
        _cloud(rng, n // 2).tofile(path)
        rec["sweeps"].append(
            {
                "lidar_path": path,
                "timestamp": 5.0 - 0.05 * (i + 1),
                "sweep2lidar": _pose(0.02 * (i + 1), [0.5 * (i + 1), 0.0, 0.0]),
            }
        )
    return rec


@pytest.fixture(scope="module")
def cfg():
    return load_config(CONFIG, ["MODEL.DEVICE", "cpu"])


@pytest.fixture(scope="module")
def model(cfg):
    torch.manual_seed(0)
    return build_model(cfg)


# ============================================================================================== #
# LiDAR files: wrong size, missing, empty, NaN/inf
# ============================================================================================== #
def test_lyft_corrupt_file_names_the_file_the_check_and_the_fix(tmp_path, cfg):
    """The real Lyft file lacks the last 2 values of its last point (size % 20 == 12)."""
    path = str(tmp_path / LYFT_BAD_FILE)
    np.ones(7 * 5 + 3, np.float32).tofile(path)
    with pytest.raises(PointFileError) as e:
        load_lidar_file(path, load_dim=5)
    msg = str(e.value)
    assert path in msg and "152 bytes" in msg
    assert "tools/create_data.py" in msg and "--check" in msg
    assert f"truncate -s 140 {path}" in msg  # 7 whole points; the fix, with the exact size
    # The same file as a keyframe, and as a sweep, through the mapper.
    rec = _record(tmp_path, np.random.default_rng(0))
    mapper = PointCloudMapper(cfg, is_train=False)
    for target in ("keyframe", "sweep"):
        r = dict(rec, sweeps=[dict(s) for s in rec["sweeps"]])
        if target == "keyframe":
            r["lidar_path"] = path
        else:
            r["sweeps"][1]["lidar_path"] = path
        with pytest.raises(PointFileError, match=LYFT_BAD_FILE):
            mapper(r)
    # The fix the message gives makes it load: 7 whole points.
    os.truncate(path, 140)
    assert load_lidar_file(path).shape == (7, 5)


def test_missing_keyframe_and_sweep_files(tmp_path, cfg):
    rec = _record(tmp_path, np.random.default_rng(1))
    mapper = PointCloudMapper(cfg, is_train=True)
    os.remove(rec["sweeps"][1]["lidar_path"])
    with pytest.raises(PointFileError) as e:
        mapper(rec)
    assert rec["sweeps"][1]["lidar_path"] in str(e.value) and "--check" in str(e.value)
    os.remove(rec["lidar_path"])
    with pytest.raises(PointFileError) as e:
        load_points(rec, num_sweeps=0)
    assert rec["lidar_path"] in str(e.value) and "does not exist" in str(e.value)


def test_nan_inf_points_are_dropped_with_a_count(tmp_path, cfg, capture_logs):
    rng = np.random.default_rng(2)
    rec = _record(tmp_path, rng, sweeps=1)
    pts = np.fromfile(rec["lidar_path"], np.float32).reshape(-1, 5)
    pts[[3, 50]] = np.nan
    pts[7, 0] = np.inf
    pts[9, 2] = -np.inf
    pts[11, 3] = np.nan  # intensity only: still dropped when intensity is a feature
    pts.tofile(rec["lidar_path"])
    features = ("x", "y", "z", "intensity", "time_lag")
    with capture_logs("d2_pillars.data.points") as records:
        out = load_points(rec, point_features=features, num_sweeps=1)
    total = 200 + 100
    assert out.shape == (total - 5, 5) and np.isfinite(out).all()
    assert any(f"Dropped 5 of {total} points" in m for m in _messages(records))
    # Through the mapper: finite voxels, same warning.
    cfg2 = cfg.clone()
    cfg2.INPUT.POINT_FEATURES = list(features)
    with capture_logs("d2_pillars.data.points") as records:
        sample = PointCloudMapper(cfg2, is_train=True)(rec)
    assert torch.isfinite(sample["voxels"]).all() and len(sample["voxels"]) > 0
    assert any("Dropped 5 of" in m for m in _messages(records))


def test_empty_cloud_maps_and_runs_through_the_model(tmp_path, cfg, model):
    """An empty keyframe (and empty sweeps) is valid: zero pillars, no crash in inference or
    training, no box predicted."""
    rng = np.random.default_rng(3)
    rec = _record(tmp_path, rng)
    for path in [rec["lidar_path"]] + [s["lidar_path"] for s in rec["sweeps"]]:
        open(path, "wb").close()
    full_dir = tmp_path / "full"
    full_dir.mkdir()
    full = _record(full_dir, rng, n=3000)
    test_mapper = PointCloudMapper(cfg, is_train=False)
    empty = test_mapper(rec)
    assert empty["voxels"].shape == (0, cfg.INPUT.MAX_POINTS_PER_VOXEL, 4)
    assert empty["voxel_coords"].shape == (0, 3) and empty["voxel_num_points"].shape == (0,)
    model.eval()
    with torch.no_grad():
        alone = model([empty])[0]["instances"]
        pair = model([empty, test_mapper(full)])
    for inst in (alone, pair[0]["instances"]):
        assert isinstance(inst.pred_boxes3d, LiDARBoxes) and len(inst) == 0
        assert inst.scores.shape == (0,) and inst.pred_classes.dtype == torch.int64
    model.train()
    train_mapper = PointCloudMapper(cfg, is_train=True)
    losses = model([train_mapper(rec)])
    assert set(losses) == {"loss_cls", "loss_box_reg", "loss_dir"}
    assert all(torch.isfinite(v) for v in losses.values())
    model.eval()


# ============================================================================================== #
# Boxes: non-positive sizes, NaN; unknown classes
# ============================================================================================== #
def test_mapper_refuses_bad_boxes_naming_the_file_and_the_fix(tmp_path, cfg):
    rec = _record(tmp_path, np.random.default_rng(4))
    mapper = PointCloudMapper(cfg, is_train=True)
    for row, col, value, what in [
        (1, 4, 0.0, "size"),
        (0, 3, -2.0, "size"),
        (2, 0, np.nan, "NaN"),
        (0, 7, np.inf, "NaN, inf"),
    ]:
        r = dict(rec, gt_boxes=rec["gt_boxes"].copy())
        r["gt_boxes"][row, col] = value
        with pytest.raises(SampleRecordError) as e:
            mapper(r)
        msg = str(e.value)
        assert rec["lidar_path"] in msg and "sample-0" in msg and what in msg
        assert "tools/create_data.py" in msg  # the fix: rebuild the info file


def _edit_table(tables_dir, name, edit):
    path = os.path.join(tables_dir, f"{name}.json")
    with open(path) as f:
        rows = json.load(f)
    edit(rows)
    with open(path, "w") as f:
        json.dump(rows, f)


@pytest.fixture(scope="module")
def damaged_lyft(tmp_path_factory, capture_logs):
    """A synthetic Lyft set whose tables hold 2 degenerate annotations (sizes 0 and < 0) and an
    unknown category ("animal" renamed "spaceship"), with its infos (warnings captured)."""
    root = make_synthetic_lyft(
        str(tmp_path_factory.mktemp("lyft_damaged")),
        num_scenes=2,
        keyframes_per_scene=3,
        seed=3,
        num_beams=8,
        azimuth_steps=90,
    )
    tables = os.path.join(root, "v1.01-train", "v1.01-train")
    bad = {}

    def degenerate(rows):
        for row, size in ((rows[0], [0.0, 4.5, 1.7]), (rows[5], [1.9, -4.5, 1.7])):
            row["size"] = size
            bad[row["token"]] = row["sample_token"]

    _edit_table(tables, "sample_annotation", degenerate)
    _edit_table(
        tables,
        "category",
        lambda rows: [r.update(name="spaceship") for r in rows if r["name"] == "animal"],
    )
    out = str(tmp_path_factory.mktemp("lyft_damaged_infos"))
    with capture_logs("d2_pillars.data.datasets.builder") as records:
        paths = create_infos(
            LYFT_SPEC,
            root,
            "v1.01-train",
            max_sweeps=1,
            out_dir=out,
            scene_split="last20",
            progress=False,
        )
    infos = [r for p in paths.values() for r in load_infos(p)[0]]
    return root, infos, bad, _messages(records)


def test_info_building_drops_degenerate_boxes_with_a_warning(damaged_lyft):
    from lyft_dataset_sdk.lyftdataset import LyftDataset

    root, infos, bad, warnings = damaged_lyft
    assert any("Dropped 2 annotations with a size <= 0" in m for m in warnings), warnings
    assert any(token in m for m in warnings for token in bad)  # names an example
    lyft = LyftDataset(
        data_path=os.path.join(root, "v1.01-train"),
        json_path=os.path.join(root, "v1.01-train", "v1.01-train"),
        verbose=False,
    )
    by_token = {r["sample_token"]: r for r in infos}
    for sample_token in set(bad.values()):
        anns = lyft.get("sample", sample_token)["anns"]
        dropped = sum(t in bad for t in anns)
        rec = by_token[sample_token]
        assert len(rec["gt_boxes"]) == len(anns) - dropped
        for key in ("gt_labels", "gt_names", "gt_categories", "num_lidar_pts", "valid_flag"):
            assert len(rec[key]) == len(rec["gt_boxes"]), key
    for rec in infos:
        assert (rec["gt_boxes"][:, 3:6] > 0).all() and np.isfinite(rec["gt_boxes"]).all()


def test_unknown_category_maps_to_minus_one_and_is_ignored_in_training(damaged_lyft, cfg, model):
    root, infos, _, _ = damaged_lyft
    unknown = [
        (rec, i) for rec in infos for i, c in enumerate(rec["gt_categories"]) if c == "spaceship"
    ]
    assert unknown, "the fixture has annotations of the unknown category"
    for rec, i in unknown:
        assert rec["gt_labels"][i] == -1 and rec["gt_names"][i] == ""
    known = [c for rec in infos for c in rec["gt_categories"] if c != "spaceship"]
    assert known and all(
        rec["gt_labels"][i] == LYFT_SPEC.classes.index(c)
        for rec in infos
        for i, c in enumerate(rec["gt_categories"])
        if c != "spaceship"
    )
    # The mapper drops label -1 ...
    rec = dict(unknown[0][0])
    for key in ("lidar_path",):
        rec[key] = os.path.join(root, rec[key])
    rec["sweeps"] = [dict(s, lidar_path=os.path.join(root, s["lidar_path"])) for s in rec["sweeps"]]
    lyft_cfg = cfg.clone()
    lyft_cfg.MODEL.ANCHOR3D_HEAD.NUM_CLASSES = len(LYFT_SPEC.classes)
    lyft_cfg.INPUT.AUG.ENABLED = False
    lyft_cfg.INPUT.MIN_GT_LIDAR_POINTS = 0
    out = PointCloudMapper(lyft_cfg, is_train=True)(rec)
    in_range = LiDARBoxes(torch.from_numpy(rec["gt_boxes"])).in_range_bev(
        lyft_cfg.INPUT.POINT_CLOUD_RANGE
    )
    expect = torch.from_numpy(rec["gt_labels"])[in_range]
    assert torch.equal(out["gt_classes"], expect[expect >= 0])
    # ... and the model ignores a label -1 box: same losses with it as without it.
    sample = {
        "voxels": out["voxels"],
        "voxel_coords": out["voxel_coords"],
        "voxel_num_points": out["voxel_num_points"],
        "gt_boxes3d": LiDARBoxes(torch.tensor([[2.0, 3.0, -1.0, 4.2, 1.9, 1.6, 0.4, 0.0, 0.0]])),
        "gt_classes": torch.tensor([0]),
    }
    extra = LiDARBoxes(torch.tensor([[-6.0, 4.0, -1.0, 4.6, 1.95, 1.7, 0.0, 0.0, 0.0]]))
    with_unknown = dict(
        sample,
        gt_boxes3d=LiDARBoxes.cat([sample["gt_boxes3d"], extra]),
        gt_classes=torch.tensor([0, -1]),
    )
    with_known = dict(with_unknown, gt_classes=torch.tensor([0, 0]))
    model.train()
    try:
        a, b, c = (model([s]) for s in (sample, with_unknown, with_known))
    finally:
        model.eval()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert any(not torch.equal(a[k], c[k]) for k in a)  # a labelled box does change them


def test_unknown_label_values_are_errors(tmp_path, cfg):
    rec = _record(tmp_path, np.random.default_rng(5))
    mapper = PointCloudMapper(cfg, is_train=False)
    for labels in ([0, 10, -1], [0, -3, 1]):
        with pytest.raises(SampleRecordError, match=r"gt_labels \[(10|-3)\]") as e:
            mapper(dict(rec, gt_labels=np.array(labels)))
        assert rec["lidar_path"] in str(e.value)


# ============================================================================================== #
# Config, versions
# ============================================================================================== #
def test_unknown_config_key_names_the_file_and_the_key(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text(f"_BASE_: {CONFIG}\nINPUT:\n  POINT_FEATURS: ['x', 'y', 'z']\n")
    with pytest.raises(KeyError) as e:
        load_config(str(path))
    assert str(path) in str(e.value) and "INPUT.POINT_FEATURS" in str(e.value)
    with pytest.raises(KeyError, match=r"command-line override.*MODEL\.ANCHOR3D_HEAD\.NUM_CLASS"):
        load_config(CONFIG, ["MODEL.ANCHOR3D_HEAD.NUM_CLASS", "3"])
    assert load_config(CONFIG, ["MODEL.ANCHOR3D_HEAD.NUM_CLASSES", "3"]).MODEL.ANCHOR3D_HEAD


def test_info_file_of_another_box_convention(tmp_path):
    path = str(tmp_path / "nuscenes_infos_val.pkl")
    save_infos(path, [], {"dataset": "nuscenes", "version": "v1.0-mini", "split": "mini_val"})
    with open(path, "rb") as f:
        data = pickle.load(f)
    data["metadata"]["box_convention_version"] = BOX_CONVENTION_VERSION + 1
    with open(path, "wb") as f:
        pickle.dump(data, f)
    with pytest.raises(InfoFileError) as e:
        load_infos(path)
    msg = str(e.value)
    assert path in msg and f"version {BOX_CONVENTION_VERSION + 1}" in msg
    assert "python tools/create_data.py nuscenes" in msg and "v1.0-mini" in msg


def test_checkpoint_of_another_box_convention(tmp_path):
    model = nn.Linear(2, 2)
    path = str(tmp_path / "model_final.pth")
    torch.save({"model": model.state_dict(), "box_convention_version": 0}, path)
    with pytest.raises(BoxConventionMismatchError) as e:
        PillarsCheckpointer(model).load(path)
    msg = str(e.value)
    assert path in msg and "version 0" in msg and "retrain" in msg


# ============================================================================================== #
# Results files
# ============================================================================================== #
LYFT_VAL, LYFT_TRAIN = "_reliability_lyft_val", "_reliability_lyft_train"


@pytest.fixture(scope="module")
def lyft_split(tmp_path_factory, register_small_synthetic):
    return register_small_synthetic(
        "lyft", tmp_path_factory.mktemp("lyft_eval"), LYFT_VAL, LYFT_TRAIN, keyframes_per_scene=3,
        seed=1, azimuth_steps=90,
    )  # fmt: skip


def _gt_results(dataset_name, name_of=None):
    """SDK-style results of the split: one box per sample (the first ground-truth box, as
    seen by ``LyftEvaluator``: global frame)."""
    results = {}
    for d in DatasetCatalog.get(dataset_name):
        boxes = LiDARBoxes(torch.from_numpy(d["gt_boxes"][:1]))
        rec = boxes.to_global_records(d["ego2global"] @ d["lidar2ego"])
        name = LYFT_SPEC.classes[max(int(d["gt_labels"][0]), 0)] if len(boxes) else "car"
        results[d["sample_token"]] = [
            {
                "sample_token": d["sample_token"],
                "translation": rec["translation"][i].tolist(),
                "size": rec["size"][i].tolist(),
                "rotation": rec["rotation"][i].tolist(),
                "name": name_of(name) if name_of else name,
                "score": 0.9,
            }
            for i in range(len(boxes))
        ]
    return results


def test_results_of_another_split_or_with_missing_samples(lyft_split, tmp_path):
    train_json = str(tmp_path / "train.json")
    write_lyft_results(train_json, _gt_results(LYFT_TRAIN))
    with pytest.raises(ResultsFileError) as e:
        evaluate_lyft_results(train_json, LYFT_VAL, method="fast")
    assert train_json in str(e.value) and "another split" in str(e.value)
    val = _gt_results(LYFT_VAL)
    dropped = sorted(val)[0]
    del val[dropped]
    val_json = str(tmp_path / "val_missing.csv")
    write_lyft_csv(val_json, val)
    with pytest.raises(ResultsFileError) as e:
        evaluate_lyft_results(val_json, LYFT_VAL, method="fast")
    assert val_json in str(e.value) and "1 samples of the split are missing" in str(e.value)
    assert dropped in str(e.value)


def test_unknown_class_name_in_results_files(lyft_split, tmp_path):
    # Lyft: JSON and Kaggle CSV.
    results = _gt_results(LYFT_VAL, name_of=lambda n: "spaceship")
    writers = ((tmp_path / "r.json", write_lyft_results), (tmp_path / "r.csv", write_lyft_csv))
    for path, write in writers:
        write(str(path), results)
        with pytest.raises(ResultsFileError) as e:
            evaluate_lyft_results(str(path), LYFT_VAL, method="fast")
        assert str(path) in str(e.value) and "spaceship" in str(e.value)
    # The same results with the right names score.
    write_lyft_results(str(tmp_path / "ok.json"), _gt_results(LYFT_VAL))
    assert evaluate_lyft_results(str(tmp_path / "ok.json"), LYFT_VAL, method="fast")["lyft"]
    # nuScenes: checked when the file is read, before the devkit asserts on it.
    box = {
        "sample_token": "s0", "translation": [1.0, 2.0, 0.5], "size": [2.0, 4.0, 1.5],
        "rotation": [1.0, 0.0, 0.0, 0.0], "velocity": [0.0, 0.0], "detection_name": "spaceship",
        "detection_score": 0.5, "attribute_name": "",
    }  # fmt: skip
    path = str(tmp_path / "results_nusc.json")
    write_nuscenes_results(path, {"s0": [box]})
    for read in (load_nuscenes_results, lambda p: evaluate_nuscenes_results(p, "unused")):
        with pytest.raises(ResultsFileError, match="unknown detection_name") as e:
            read(path)
        assert path in str(e.value) and "spaceship" in str(e.value)
    write_nuscenes_results(path, {"s0": [dict(box, detection_name="car", attribute_name="x.y")]})
    with pytest.raises(ResultsFileError, match=r"unknown attribute_name \['x.y'\]"):
        load_nuscenes_results(path)


# ============================================================================================== #
# Atomic writes
# ============================================================================================== #
@contextlib.contextmanager
def _umask(mask):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def test_atomic_open_respects_the_umask_like_open(tmp_path):
    for mask in (0o022, 0o027, 0o077, 0o002):
        with _umask(mask):
            with open(tmp_path / f"plain{mask}", "w") as f:
                f.write("x")
            with atomic_open(tmp_path / f"atomic{mask}", "w") as f:
                f.write("x")
        plain = stat.S_IMODE(os.stat(tmp_path / f"plain{mask}").st_mode)
        atomic = stat.S_IMODE(os.stat(tmp_path / f"atomic{mask}").st_mode)
        assert atomic == plain == 0o666 & ~mask
    # An existing file keeps its mode, as with open(path, "w").
    path = tmp_path / "kept"
    path.write_text("old")
    os.chmod(path, 0o640)
    with _umask(0o022):
        with atomic_open(path, "w") as f:
            f.write("new")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640 and path.read_text() == "new"


def _no_temp_files(folder):
    return not glob.glob(os.path.join(str(folder), "**", "*.tmp"), recursive=True)


@pytest.mark.parametrize("failure", ["exception", "fsync", "replace", "fdopen"])
def test_atomic_open_failure_keeps_the_previous_file(tmp_path, monkeypatch, failure):
    path = tmp_path / "out.bin"
    path.write_bytes(b"previous")
    calls = {"fsync": "fsync", "replace": "replace", "fdopen": "fdopen"}

    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    if failure in calls:
        monkeypatch.setattr(file_io.os, calls[failure], fail)
    with pytest.raises((OSError, RuntimeError)):
        with atomic_open(path, "wb") as f:
            f.write(b"partial new content")
            if failure == "exception":
                raise RuntimeError("interrupted")
    monkeypatch.undo()
    assert path.read_bytes() == b"previous"
    assert os.listdir(tmp_path) == ["out.bin"]


def _run_lyft_evaluator(dataset_name, output_dir, score):
    ev = LyftEvaluator(dataset_name, output_dir, method="fast", distributed=False)
    ev.reset()
    for d in DatasetCatalog.get(dataset_name):
        keep = d["gt_labels"] >= 0
        inst = Instances(
            (1, 1),
            pred_boxes3d=LiDARBoxes(torch.from_numpy(d["gt_boxes"][keep])),
            scores=torch.full((int(keep.sum()),), score),
            pred_classes=torch.from_numpy(d["gt_labels"][keep]),
        )
        inp = {k: d[k] for k in ("sample_token", "lidar2ego", "ego2global")}
        ev.process([inp], [{"instances": inst}])
    return ev


def test_interrupted_evaluation_leaves_no_partial_file(lyft_split, tmp_path, monkeypatch):
    out = str(tmp_path / "eval")
    assert _run_lyft_evaluator(LYFT_VAL, out, 0.9).evaluate()["lyft"]["mAP"] > 0.99
    files = ("results_lyft.json", "results_lyft.csv", "lyft_metrics.json")
    before = {f: open(os.path.join(out, f), "rb").read() for f in files}

    # 1. An object json cannot write, met midway through the results.
    ev = _run_lyft_evaluator(LYFT_VAL, out, 0.5)
    i = max(k for k, (_, boxes) in enumerate(ev._predictions) if boxes)  # late in the file
    token, boxes = ev._predictions[i]
    ev._predictions[i] = (token, boxes + [dict(boxes[0], score=object())])
    with pytest.raises(TypeError, match="not JSON serializable"):
        ev.evaluate()
    assert {f: open(os.path.join(out, f), "rb").read() for f in files} == before
    assert _no_temp_files(out)

    # 2. The file system fails while the temporary file is flushed.
    ev = _run_lyft_evaluator(LYFT_VAL, out, 0.5)

    def no_space(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(file_io.os, "fsync", no_space)
    with pytest.raises(OSError, match="No space"):
        ev.evaluate()
    monkeypatch.undo()
    assert {f: open(os.path.join(out, f), "rb").read() for f in files} == before
    assert _no_temp_files(out)
    # The nuScenes writer goes through the same path.
    nus = str(tmp_path / "results_nusc.json")
    write_nuscenes_results(nus, {"s": []})
    with pytest.raises(TypeError):
        write_nuscenes_results(nus, {"s": [{"detection_score": np.float32(1.0)}]})
    assert json.load(open(nus))["results"] == {"s": []} and _no_temp_files(tmp_path)


def test_interrupted_checkpoint_and_info_saves_keep_the_previous_file(tmp_path, monkeypatch):
    model = nn.Linear(3, 2)
    ckpt = PillarsCheckpointer(model, str(tmp_path))
    ckpt.save("model_0000009", iteration=9)
    before = open(tmp_path / "model_0000009.pth", "rb").read()
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model.weight.add_(1.0)

    def killed_midway(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt  # Ctrl-C in the middle of the write

    monkeypatch.setattr(checkpointer_module.torch, "save", killed_midway)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save("model_0000009", iteration=10)
    monkeypatch.undo()
    assert open(tmp_path / "model_0000009.pth", "rb").read() == before
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000009.pth"
    assert _no_temp_files(tmp_path)
    fresh = nn.Linear(3, 2)
    assert PillarsCheckpointer(fresh).load(str(tmp_path / "model_0000009.pth"))["iteration"] == 9
    assert all(torch.equal(fresh.state_dict()[k], saved[k]) for k in saved)

    info = str(tmp_path / "lyft_infos_val.pkl")
    meta = {"dataset": "lyft", "version": "v1.01-train", "split": "val"}
    save_infos(info, [{"sample_token": "a"}], meta)
    monkeypatch.setattr(file_io.os, "replace", lambda *a: (_ for _ in ()).throw(OSError(5, "EIO")))
    with pytest.raises(OSError, match="EIO"):
        save_infos(info, [{"sample_token": "b"}], meta)
    monkeypatch.undo()
    assert load_infos(info)[0] == [{"sample_token": "a"}] and _no_temp_files(tmp_path)


# ============================================================================================== #
# tools/create_data.py --check, and the mapper on the same damaged dataset
# ============================================================================================== #
def test_create_data_check_lists_missing_and_corrupt_files(tmp_path_factory, cfg, capsys):
    root = make_synthetic_nuscenes(
        str(tmp_path_factory.mktemp("nus_check") / "nuscenes"),
        num_scenes=2,
        keyframes_per_scene=2,
        seed=2,
        num_beams=8,
        azimuth_steps=90,
    )
    paths = create_infos(NUSCENES_SPEC, root, "v1.0-mini", max_sweeps=2, progress=False)
    args = ["nuscenes", "--root", root, "--version", "v1.0-mini", "--check", "--quiet"]
    spec = importlib.util.spec_from_file_location(
        "create_data_cli", os.path.join(REPO, "tools", "create_data.py")
    )
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    assert cli.main(args) == 0  # in-process for the clean dataset; the CLI itself below
    assert ": 0 bad" in capsys.readouterr().out

    name = "_reliability_nus_check"
    if name not in DatasetCatalog.list():
        register_nuscenes(name, paths["mini_train"], root)
    records = DatasetCatalog.get(name)
    rec = next(r for r in records if r["sweeps"])
    key, sweep = rec["lidar_path"], rec["sweeps"][0]["lidar_path"]
    assert "/samples/LIDAR_TOP/" in key and "/sweeps/LIDAR_TOP/" in sweep
    os.truncate(key, os.path.getsize(key) - 8)
    os.remove(sweep)

    cmd = [sys.executable, os.path.join(REPO, "tools", "create_data.py")] + args
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    bad = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    lines = bad.stdout.splitlines()
    assert f"missing: {sweep}" in lines
    assert any(line.startswith("corrupt: ") and line.endswith(key) for line in lines)
    assert ": 2 bad" in bad.stdout and "Fix:" in bad.stdout

    mapper = PointCloudMapper(cfg, is_train=False)
    with pytest.raises(PointFileError, match=re.escape(key)):
        mapper(rec)
    # Apply the fix the message gives (cut the partial point); then the missing sweep shows.
    size = os.path.getsize(key)
    os.truncate(key, size - size % 20)
    with pytest.raises(PointFileError, match=re.escape(sweep)):
        mapper(rec)


# ============================================================================================== #
# Safe loading
# ============================================================================================== #
class _WritesAFile:
    """Unpickling this runs ``open(marker, "w")``: code execution, visible as a new file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_info_file_with_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    path = str(tmp_path / "nuscenes_infos_val.pkl")
    payload = {
        "metadata": {"box_convention_version": BOX_CONVENTION_VERSION, "info_format_version": 1},
        "infos": [{"sample_token": "a", "x": _WritesAFile(str(marker))}],
    }
    with open(path, "wb") as f:
        pickle.dump(payload, f)
    with pytest.raises(InfoFileError, match="refusing to unpickle '(io|builtins).open'") as e:
        load_infos(path)
    assert path in str(e.value) and not marker.exists()
    with open(path, "rb") as f:  # the payload is live: plain pickle runs it
        pickle.load(f)
    assert marker.exists()


@pytest.mark.parametrize("ext", [".pth", ".pkl"])
def test_checkpoint_with_code_is_refused_without_running_it(tmp_path, ext):
    marker = tmp_path / "pwned"
    model = nn.Linear(2, 2)
    path = str(tmp_path / f"weights{ext}")
    payload = {
        "model": {k: v.numpy() for k, v in model.state_dict().items()},
        "__author__": "someone",
        "extra": _WritesAFile(str(marker)),
    }
    if ext == ".pth":
        torch.save(payload, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(payload, f)
    with pytest.raises(Exception, match="weights_only|refusing to unpickle") as e:
        PillarsCheckpointer(model).load(path)
    assert path in str(e.value) and not marker.exists()
    # A clean detectron2 model-zoo .pkl still loads (numpy arrays only).
    if ext == ".pkl":
        del payload["extra"]
        payload["model"] = {
            k: np.full(v.shape, 0.5, np.float32) for k, v in payload["model"].items()
        }
        with open(path, "wb") as f:
            pickle.dump(payload, f)
        PillarsCheckpointer(model).load(path)
        assert torch.equal(model.weight, torch.full((2, 2), 0.5))


def _unsafe_calls(tree):
    """(line, description) of calls that could run code from data: eval/exec/compile, pickle
    and yaml loaders, torch.load without weights_only=True, np.load with allow_pickle=True."""
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.id if isinstance(func, ast.Name) else None
        attr = func.attr if isinstance(func, ast.Attribute) else None
        owner = func.value.id if attr and isinstance(func.value, ast.Name) else None
        kw = {k.arg: k.value for k in node.keywords}
        if name in ("eval", "exec", "compile") or (
            owner == "builtins" and attr in ("eval", "exec")
        ):
            found.append((node.lineno, f"{name or attr}()"))
        elif owner in ("pickle", "cPickle", "dill", "marshal") and attr in ("load", "loads"):
            found.append((node.lineno, f"{owner}.{attr}()"))
        elif owner == "yaml" and attr in ("load", "unsafe_load", "full_load", "load_all"):
            found.append((node.lineno, f"yaml.{attr}()"))
        elif owner == "torch" and attr == "load":
            weights_only = kw.get("weights_only")
            if not (isinstance(weights_only, ast.Constant) and weights_only.value is True):
                found.append((node.lineno, "torch.load() without weights_only=True"))
        elif owner in ("np", "numpy") and attr == "load":
            allow = kw.get("allow_pickle")
            if allow is not None and not (isinstance(allow, ast.Constant) and not allow.value):
                found.append((node.lineno, "np.load(allow_pickle=...)"))
    return found


def test_no_code_execution_from_data_in_the_package():
    """No eval/exec of config strings or file contents anywhere in the package or the CLIs;
    detectron2's yacs parsing of config values uses ``ast.literal_eval`` (not ours)."""
    files = glob.glob(os.path.join(REPO, "d2_pillars", "**", "*.py"), recursive=True)
    files += glob.glob(os.path.join(REPO, "tools", "*.py"))
    assert len(files) > 30
    problems = []
    for path in files:
        with open(path) as f:
            tree = ast.parse(f.read(), path)
        rel = os.path.relpath(path, REPO)
        problems += [f"{rel}:{line}: {what}" for line, what in _unsafe_calls(tree)]
    assert not problems, "\n".join(problems)
    # The checker does see them.
    probe = ast.parse(
        "eval(s)\npickle.load(f)\ntorch.load(p)\nyaml.load(s)\nnp.load(p, allow_pickle=True)"
    )
    assert len(_unsafe_calls(probe)) == 5
