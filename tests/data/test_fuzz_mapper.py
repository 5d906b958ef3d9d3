"""Fuzz: 200 malformed point files and info records through ``PointCloudMapper``.

Every case must end in one of two ways:

* a documented error, ``PointFileError`` (the LiDAR files) or ``SampleRecordError`` (the record),
  whose message names the file concerned (the sample's LiDAR file, or the broken sweep's);
* a valid model input: the keys of ``docs/internals.md``, right shapes and dtypes, finite values,
  pillar coordinates inside the grid, ground truth inside the range with sizes > 0 and labels
  in ``[0, NUM_CLASSES)`` (or None in training when no ground truth is left).

Each malformation also has the outcome it must have (error or valid sample), so a case that
silently maps to a sample where an error was due (or the reverse) fails too. Cases cycle through
the malformations, with their parameters drawn from a seeded generator; half run the training
mapper (augmentation, random sweeps, shuffling), half the test mapper. Tiny clouds on a 32 x 32
grid keep the whole run to a few seconds.
"""

import math
import numpy as np
import os
import time
import pytest
import torch

from d2_pillars.data.mapper import PointCloudMapper, SampleRecordError
from d2_pillars.data.points import PointFileError
from d2_pillars.engine.defaults import load_config
from d2_pillars.structures import LiDARBoxes

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(REPO, "configs", "synthetic", "pointpillars_secfpn_cpu.yaml")
RANGE = [-8.0, -8.0, -5.0, 8.0, 8.0, 3.0]
NUM_CASES = 200
SEED = 20240607
ERROR, VALID = "error", "valid"


def _cfg():
    return load_config(
        CONFIG,
        [
            "MODEL.DEVICE", "cpu",
            "INPUT.POINT_CLOUD_RANGE", str(RANGE),
            "INPUT.VOXEL_SIZE", "[0.5, 0.5, 8.0]",
            "INPUT.MAX_POINTS_PER_VOXEL", "8",
            "INPUT.MAX_VOXELS_TRAIN", "400",
            "INPUT.MAX_VOXELS_TEST", "400",
            "INPUT.NUM_SWEEPS", "3",
            # intensity too: a NaN there (x, y, z finite) must not reach the voxels
            "INPUT.POINT_FEATURES", '["x", "y", "z", "intensity", "time_lag"]',
        ],
    )  # fmt: skip


@pytest.fixture(scope="module")
def mappers():
    cfg = _cfg()
    assert cfg.INPUT.MIN_GT_LIDAR_POINTS >= 1 and cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS
    return cfg, PointCloudMapper(cfg, is_train=True), PointCloudMapper(cfg, is_train=False)


# --------------------------------------------------------------------------------- the base case
def _pose(yaw, t):
    m = np.eye(4)
    m[:2, :2] = [[math.cos(yaw), -math.sin(yaw)], [math.sin(yaw), math.cos(yaw)]]
    m[:3, 3] = t
    return m


def _cloud(rng, n):
    return np.c_[
        rng.uniform(-7, 7, (n, 2)),
        rng.uniform(-2, 1, n),
        rng.uniform(0, 255, n),
        rng.integers(0, 32, n),
    ].astype(np.float32)


def _base_record(rng, folder):
    """A well-formed record: keyframe + 2 sweeps (tiny clouds) and 3 boxes (K, 9)."""
    os.makedirs(folder)
    key = os.path.join(folder, "key.bin")
    _cloud(rng, int(rng.integers(20, 60))).tofile(key)
    sweeps = []
    for i in range(2):
        path = os.path.join(folder, f"sweep{i}.bin")
        _cloud(rng, int(rng.integers(10, 40))).tofile(path)
        sweeps.append(
            {
                "lidar_path": path,
                "timestamp": 10.0 - 0.05 * (i + 1),
                "sweep2lidar": _pose(rng.uniform(-0.1, 0.1), [rng.uniform(-1, 1), 0.2, 0.0]),
            }
        )
    boxes = np.c_[
        rng.uniform(-3, 3, (3, 2)), rng.uniform(-1, 0, 3),      # centre
        rng.uniform(0.5, 4, (3, 3)),                             # l, w, h
        rng.uniform(-math.pi, math.pi, 3), rng.uniform(-2, 2, (3, 2)),  # yaw, velocity
    ].astype(np.float32)  # fmt: skip
    return {
        "dataset": "nuscenes",
        "sample_token": f"tok{folder[-4:]}",
        "timestamp": 10.0,
        "lidar_path": key,
        "lidar2ego": _pose(0.01, [0.9, 0.0, 1.8]),
        "ego2global": _pose(1.2, [400.0, 1100.0, 0.0]),
        "sweeps": sweeps,
        "gt_boxes": boxes,
        "gt_names": ["car", "pedestrian", "barrier"],
        "gt_labels": np.array([0, 8, 9], np.int64),
        "num_lidar_pts": np.array([12, 3, 1], np.int64),
        "num_radar_pts": np.zeros(3, np.int64),
    }


# ------------------------------------------------------------------------------ malformations
# Each takes (rng, record, is_train) and returns (expected outcome, the file the error must name).
def _file_of(rec, rng):
    """The keyframe or one of the sweeps (all are read: NUM_SWEEPS 3 >= 2 sweeps)."""
    files = [rec["lidar_path"]] + [s["lidar_path"] for s in rec["sweeps"]]
    return files[int(rng.integers(len(files)))]


def truncated_file(rng, rec, is_train):
    path = _file_of(rec, rng)
    size = os.path.getsize(path)
    cut = int(rng.integers(1, 20)) if size >= 20 else 0
    with open(path, "r+b") as f:
        f.truncate(size - cut if cut else 7)
    return ERROR, path


def zero_length_file(rng, rec, is_train):
    path = _file_of(rec, rng)
    open(path, "wb").close()
    return VALID, None


def random_bytes(rng, rec, is_train):
    path = _file_of(rec, rng)
    n = int(rng.integers(0, 400))
    if rng.random() < 0.5:
        n -= n % 20  # a whole number of "points" of garbage
    with open(path, "wb") as f:
        f.write(rng.bytes(n))
    return (VALID, None) if n % 20 == 0 else (ERROR, path)


def nan_inf_points(rng, rec, is_train):
    path = _file_of(rec, rng)
    pts = np.fromfile(path, np.float32).reshape(-1, 5)
    idx = rng.random(pts.shape) < rng.uniform(0.05, 1.0)
    pts[idx] = rng.choice(np.array([np.nan, np.inf, -np.inf], np.float32), int(idx.sum()))
    pts.tofile(path)
    return VALID, None


def huge_coordinates(rng, rec, is_train):
    path = _file_of(rec, rng)
    pts = np.fromfile(path, np.float32).reshape(-1, 5)
    idx = rng.random(pts.shape[0]) < 0.5
    pts[idx, :3] = rng.choice(
        np.array([1e30, -1e30, 3.4e38, -3.4e38, 1e6], np.float32), (int(idx.sum()), 3)
    )
    pts.tofile(path)
    if rec["sweeps"] and rng.random() < 0.5:
        rec["sweeps"][0]["sweep2lidar"][:3, 3] = rng.choice([1e30, -1e300, 5e4], 3)  # rigid, far
    return VALID, None


def missing_file(rng, rec, is_train):
    path = _file_of(rec, rng)
    os.remove(path)
    return ERROR, path


def broken_sweep_transform(rng, rec, is_train):
    sweep = rec["sweeps"][int(rng.integers(len(rec["sweeps"])))]
    kind = int(rng.integers(6))
    m = np.array(sweep["sweep2lidar"])
    if kind == 0:
        m[rng.integers(4), rng.integers(4)] = np.nan
    elif kind == 1:
        m[rng.integers(3), rng.integers(4)] = np.inf
    elif kind == 2:
        m = m[:3, :3]
    elif kind == 3:
        m = m[:, :3]
    elif kind == 4:
        m = rng.normal(size=(4, 4))  # finite but not rigid
    else:
        m = "identity"
    sweep["sweep2lidar"] = m
    return ERROR, sweep["lidar_path"]


def bad_box_sizes(rng, rec, is_train):
    k = int(rng.integers(3))
    rec["gt_boxes"][k, 3 + int(rng.integers(3))] = rng.choice([0.0, -0.5, -1e-6])
    return ERROR, rec["lidar_path"]


def nan_boxes(rng, rec, is_train):
    k = int(rng.integers(3))
    rec["gt_boxes"][k, int(rng.integers(9))] = rng.choice([np.nan, np.inf, -np.inf, 1e30])
    return ERROR, rec["lidar_path"]


def unknown_labels(rng, rec, is_train):
    if rng.random() < 0.4:
        rec["gt_labels"] = np.array([-1, 2, -1], np.int64)  # unmapped classes: ignored
        return VALID, None
    rec["gt_labels"][int(rng.integers(3))] = rng.choice([10, 57, -2, -100])
    return ERROR, rec["lidar_path"]


def empty_gt(rng, rec, is_train):
    shapes = [np.zeros((0, 9), np.float32), np.zeros((0, 7), np.float32), np.zeros(0), []]
    rec["gt_boxes"] = shapes[int(rng.integers(len(shapes)))]
    rec["gt_labels"] = [] if rng.random() < 0.5 else np.zeros(0, np.int64)
    rec["num_lidar_pts"] = np.zeros(0, np.int64)
    rec["gt_names"] = []
    return VALID, None


def mismatched_gt(rng, rec, is_train):
    key = "num_lidar_pts" if rng.random() < 0.4 else "gt_labels"
    rec[key] = np.concatenate([rec[key], [1]]) if rng.random() < 0.5 else rec[key][:2]
    if key == "num_lidar_pts" and not is_train:
        return VALID, None  # the point-count filter (and so this array) is training only
    return ERROR, rec["lidar_path"]


def missing_key(rng, rec, is_train):
    keys = ["sample_token", "timestamp", "lidar_path", "lidar2ego", "ego2global", "sweeps",
            "gt_boxes", "gt_labels", "num_lidar_pts", "sweep.lidar_path", "sweep.timestamp",
            "sweep.sweep2lidar"]  # fmt: skip
    key = keys[int(rng.integers(len(keys)))]
    if key.startswith("sweep."):
        del rec["sweeps"][0][key[6:]]
        return ERROR, rec["lidar_path"]
    del rec[key]
    if key in ("sweeps", "gt_boxes") or (key == "num_lidar_pts" and not is_train):
        return VALID, None
    return ERROR, rec.get("lidar_path", rec.get("sample_token"))


def wrong_types(rng, rec, is_train):
    kind = int(rng.integers(5))
    if kind == 0:
        rec["gt_boxes"] = [["a"] * 9] * 3
    elif kind == 1:
        rec["gt_labels"] = rec["gt_labels"].astype(np.float32)
    elif kind == 2:
        rec["timestamp"] = float(rng.choice([np.nan, np.inf]))
    elif kind == 3:
        rec["lidar2ego"] = np.eye(3)
    else:
        rec["sweeps"] = "sweeps.bin"
    return ERROR, rec["lidar_path"]


MALFORMATIONS = [
    truncated_file, zero_length_file, random_bytes, nan_inf_points, huge_coordinates,
    missing_file, broken_sweep_transform, bad_box_sizes, nan_boxes, unknown_labels, empty_gt,
    mismatched_gt, missing_key, wrong_types,
]  # fmt: skip


# ------------------------------------------------------------------------------------ checks
def _check_valid_sample(out, rec, cfg, is_train):
    if out is None:
        # Only training drops a sample, and only when no labelled ground truth is left.
        assert is_train and cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS
        labels = np.asarray(rec.get("gt_labels", []))
        assert "gt_boxes" in rec and not (labels >= 0).any()
        return
    m = cfg.INPUT.MAX_POINTS_PER_VOXEL
    c = len(cfg.INPUT.POINT_FEATURES)
    nx = round((RANGE[3] - RANGE[0]) / cfg.INPUT.VOXEL_SIZE[0])
    ny = round((RANGE[4] - RANGE[1]) / cfg.INPUT.VOXEL_SIZE[1])
    for key in ("sample_token", "timestamp", "lidar2ego", "ego2global"):
        assert out[key] is rec[key]
    voxels, coords, num = out["voxels"], out["voxel_coords"], out["voxel_num_points"]
    v = voxels.shape[0]
    assert voxels.dtype == torch.float32 and voxels.shape == (v, m, c)
    assert coords.dtype == torch.int32 and coords.shape == (v, 3)
    assert num.dtype == torch.int32 and num.shape == (v,)
    assert torch.isfinite(voxels).all()
    if v:
        assert (coords[:, 0] == 0).all()
        assert (coords[:, 1] >= 0).all() and (coords[:, 1] < ny).all()
        assert (coords[:, 2] >= 0).all() and (coords[:, 2] < nx).all()
        assert (num >= 1).all() and (num <= m).all()
        xyz = voxels[:, :, :3]
        filled = torch.arange(m)[None, :] < num[:, None].long()
        lo, hi = torch.tensor(RANGE[:3]), torch.tensor(RANGE[3:])
        assert ((xyz > lo) & (xyz < hi)).all(-1)[filled].all()
        assert (voxels[~filled] == 0).all()
    if "gt_boxes" not in rec:
        assert "gt_boxes3d" not in out and "gt_classes" not in out
        return
    boxes, classes = out["gt_boxes3d"], out["gt_classes"]
    assert isinstance(boxes, LiDARBoxes) and boxes.tensor.dtype == torch.float32
    assert boxes.tensor.ndim == 2 and boxes.tensor.shape[1] in (7, 9)
    assert classes.dtype == torch.int64 and classes.shape == (len(boxes),)
    assert torch.isfinite(boxes.tensor).all() and (boxes.dims > 0).all()
    assert ((classes >= 0) & (classes < cfg.MODEL.ANCHOR3D_HEAD.NUM_CLASSES)).all()
    assert boxes.in_range_bev(RANGE).all()
    assert ((boxes.yaw >= -math.pi) & (boxes.yaw < math.pi)).all()


def _run_case(i, tmp_path, mappers):
    cfg, train_mapper, test_mapper = mappers
    rng = np.random.default_rng([SEED, i])
    # Cases cycle through the malformations; each cycle flips the mapper.
    is_train = bool((i // len(MALFORMATIONS)) % 2)
    rec = _base_record(rng, str(tmp_path / f"c{i:03d}"))
    malformation = MALFORMATIONS[i % len(MALFORMATIONS)]
    expected, named_file = malformation(rng, rec, is_train)
    mapper = train_mapper if is_train else test_mapper
    what = f"case {i} ({malformation.__name__}, {'train' if is_train else 'test'})"
    try:
        out = mapper(rec)
    except (PointFileError, SampleRecordError) as e:
        assert expected == ERROR, f"{what}: unexpected {type(e).__name__}: {e}"
        assert named_file in str(e), f"{what}: the message does not name {named_file}: {e}"
        return ERROR
    assert expected == VALID, f"{what}: an error was due, got a sample"
    _check_valid_sample(out, rec, cfg, is_train)
    return VALID


# A sweep translation of 1e300 m overflows float32 on purpose (its points become inf: dropped).
@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
def test_fuzz_mapper(tmp_path, mappers):
    start = time.perf_counter()
    outcomes = [_run_case(i, tmp_path, mappers) for i in range(NUM_CASES)]
    elapsed = time.perf_counter() - start
    # Both outcomes occur often, and every malformation ran on both mappers.
    assert outcomes.count(ERROR) > 60 and outcomes.count(VALID) > 40
    assert NUM_CASES >= 2 * len(MALFORMATIONS)
    assert elapsed < 30, f"the fuzz run took {elapsed:.1f} s"


def test_fuzz_cases_are_deterministic(tmp_path, mappers):
    """The same case index builds the same record (same seed), so a failure is reproducible."""
    a = _base_record(np.random.default_rng([SEED, 7]), str(tmp_path / "a0007"))
    b = _base_record(np.random.default_rng([SEED, 7]), str(tmp_path / "b0007"))
    np.testing.assert_array_equal(a["gt_boxes"], b["gt_boxes"])
    for x, y in zip([a["lidar_path"]] + [s["lidar_path"] for s in a["sweeps"]],
                    [b["lidar_path"]] + [s["lidar_path"] for s in b["sweeps"]]):  # fmt: skip
        assert open(x, "rb").read() == open(y, "rb").read()
