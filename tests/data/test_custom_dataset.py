"""Own-data layout: label parsing, the scan's problems (every broken input kind, all collected),
splits, records and registration."""

import json
import numpy as np
import os
import pytest

from detectron2.data import DatasetCatalog, MetadataCatalog

from d2_pillars.data import PointCloudMapper  # noqa: F401  (registers nothing custom)
from d2_pillars.data.datasets.custom import (
    parse_label_file,
    register_custom_dataset,
    scan_dataset,
    split_frames,
    write_custom_infos,
)

CLASSES = ("Car", "Pedestrian")


def make_dataset(root, num_frames=6, *, labels=True, yaml_text=None, seed=0):
    """A hand-made own-data folder: per frame a ground plane, a car and a pedestrian (points
    inside both boxes) as .bin files; labels ``x y z dx dy dz yaw class``."""
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(root, "points"), exist_ok=True)
    os.makedirs(os.path.join(root, "labels"), exist_ok=True)
    for i in range(num_frames):
        car = [rng.uniform(5, 20), rng.uniform(-10, 10), -0.9, 4.5, 1.9, 1.6, rng.uniform(-3, 3)]
        ped = [rng.uniform(-20, -5), rng.uniform(-10, 10), -0.9, 0.7, 0.7, 1.8, 0.0]
        pts = [np.c_[rng.uniform(-30, 30, (500, 2)), np.full(500, -1.8)]]
        for b in (car, ped):
            local = rng.uniform(-0.4, 0.4, (60, 3)) * np.array(b[3:6])
            c, s = np.cos(b[6]), np.sin(b[6])
            xy = local[:, :2] @ np.array([[c, s], [-s, c]])
            pts.append(np.c_[xy + b[:2], local[:, 2] + b[2]])
        xyz = np.concatenate(pts).astype(np.float32)
        cloud = np.c_[xyz, rng.uniform(0, 255, len(xyz))].astype(np.float32)
        cloud.tofile(os.path.join(root, "points", f"f{i:02d}.bin"))
        if labels:
            with open(os.path.join(root, "labels", f"f{i:02d}.txt"), "w") as f:
                f.write(" ".join(f"{v:.4f}" for v in car) + " Car\n")
                f.write(" ".join(f"{v:.4f}" for v in ped) + " Pedestrian\n")
    if yaml_text is not None:
        with open(os.path.join(root, "dataset.yaml"), "w") as f:
            f.write(yaml_text)
    return str(root)


def test_parse_label_file(tmp_path):
    path = tmp_path / "l.txt"
    path.write_text(
        "# comment\n1 2 3 4 2 1.5 0.1 Car\n\n1 2 3\n1 2 x 4 2 1.5 0 Car\n1 2 3 0 2 1 0 Car\n"
        "1 2 nan 4 2 1 0 Car\n"
    )
    boxes, names, problems = parse_label_file(str(path))
    np.testing.assert_allclose(boxes, [[1, 2, 3, 4, 2, 1.5, 0.1]])
    assert names == ["Car"]
    assert [p.split(":")[0] for p in problems] == ["line 4", "line 5", "line 6", "line 7"]
    assert "3 fields, expected 8" in problems[0] and "not all numbers" in problems[1]
    assert "must be > 0" in problems[2] and "NaN" in problems[3]


def test_scan_collects_every_broken_file(tmp_path):
    root = make_dataset(tmp_path / "ds")
    pts, lab = os.path.join(root, "points"), os.path.join(root, "labels")
    data = open(os.path.join(pts, "f00.bin"), "rb").read()
    open(os.path.join(pts, "f00.bin"), "wb").write(data[:-6])  # truncated .bin
    for name in ("pc.pcd", "pl.ply", "la.las"):
        open(os.path.join(pts, name), "wb").write(b"not a point cloud at all\n")
    with open(os.path.join(lab, "f01.txt"), "a") as f:
        f.write("1 2 3\n")  # 3 fields
    with open(os.path.join(lab, "f02.txt"), "a") as f:
        f.write("1 2 three 4 2 1 0 Car\n")  # a non-number
    with open(os.path.join(lab, "f03.txt"), "a") as f:
        f.write("1 2 3 4 -2 1 0 Car\n")  # a size <= 0
    open(os.path.join(lab, "orphan.txt"), "w").write("1 2 3 4 2 1 0 Car\n")  # no points file
    scan = scan_dataset(root, progress=False)
    found = {os.path.basename(p): r for p, r in scan.problems}
    assert "whole number of points" in found["f00.bin"]
    assert "pypcd4 cannot read" in found["pc.pcd"]
    assert "plyfile cannot read" in found["pl.ply"]
    assert "laspy cannot read" in found["la.las"]
    assert "3 fields" in found["f01.txt"]
    assert "not all numbers" in found["f02.txt"]
    assert "must be > 0" in found["f03.txt"]
    assert "without a points file" in found["orphan.txt"]
    assert len(scan.problems) == 8
    open(os.path.join(pts, "f04.npy"), "wb").write(b"x")  # a second points file of frame f04
    found = {os.path.basename(p): r for p, r in scan_dataset(root, progress=False).problems}
    assert "second points file of frame 'f04'" in found["f04.npy"]
    with pytest.raises(ValueError, match="problems"):
        write_custom_infos(scan, {"train": ["f04"]}, "x")
    assert not os.path.exists(os.path.join(root, "d2_pillars"))


def test_dataset_yaml_problems(tmp_path):
    root = make_dataset(tmp_path / "ds", 2, yaml_text="box_origin: top\nno_such_key: 1\n")
    reasons = [r for _, r in scan_dataset(root, progress=False).problems]
    assert any("unknown keys ['no_such_key']" in r for r in reasons)
    assert any("box_origin must be" in r for r in reasons)


def test_records_registration_and_mapper(tmp_path):
    root = make_dataset(
        tmp_path / "own", 6, yaml_text="name: unit_own\nbox_origin: bottom\nval_fraction: 0.34\n"
    )
    os.remove(os.path.join(root, "labels", "f05.txt"))  # an unlabelled frame
    scan = scan_dataset(root, progress=False)
    assert not scan.problems, scan.problems
    splits, how = split_frames(scan)
    assert "seeded split" in how
    assert (len(splits["train"]), len(splits["val"]), splits["unlabelled"]) == (3, 2, ["f05"])
    assert split_frames(scan)[0] == splits  # seeded: the same split again
    written = write_custom_infos(scan, splits, how)
    assert sorted(written) == ["unit_own_train", "unit_own_unlabelled", "unit_own_val"]
    names = register_custom_dataset(root)
    assert register_custom_dataset(root) == names  # again: nothing changes
    meta = MetadataCatalog.get("unit_own_val")
    assert meta.evaluator_type == "custom" and meta.thing_classes == list(CLASSES)
    assert meta.class_iou_thresholds == {"Car": [0.7, 0.5], "Pedestrian": [0.5, 0.25]}
    assert meta.root == os.path.abspath(root) and os.path.isfile(meta.info_path)

    rec = DatasetCatalog.get("unit_own_train")[0]
    for key in ("token", "sample_token", "lidar_path", "gt_boxes", "gt_names", "gt_labels"):
        assert key in rec
    assert rec["has_labels"] and rec["gt_boxes"].dtype == np.float32
    assert rec["gt_boxes"].shape == (2, 7) and rec["gt_labels"].dtype == np.int64
    assert os.path.isabs(rec["lidar_path"]) and rec["num_lidar_pts"].min() > 0
    # box_origin bottom: z of the label line + h / 2, once
    line = open(os.path.join(root, "labels", f"{rec['token']}.txt")).readline().split()
    assert rec["gt_boxes"][0, 2] == pytest.approx(float(line[2]) + float(line[5]) / 2, abs=1e-5)
    (unlabelled,) = DatasetCatalog.get("unit_own_unlabelled")
    assert not unlabelled["has_labels"] and unlabelled["gt_boxes"].shape == (0, 7)

    from d2_pillars.engine import load_config

    cfg = load_config(
        "",
        [
            "INPUT.LOAD_DIM", "4", "INPUT.POINT_FEATURES", "['x', 'y', 'z', 'intensity']",
            "INPUT.NUM_SWEEPS", "0", "MODEL.ANCHOR3D_HEAD.NUM_CLASSES", "2",
        ],
    )  # fmt: skip
    out = PointCloudMapper(cfg, is_train=False)(rec)
    assert out["voxels"].shape[-1] == 4 and len(out["gt_boxes3d"]) == 2


def test_another_root_under_a_registered_name(tmp_path):
    a = make_dataset(tmp_path / "a", 3, yaml_text="name: clash_own\n")
    b = make_dataset(tmp_path / "b", 3, yaml_text="name: clash_own\n")
    for root in (a, b):
        scan = scan_dataset(root, progress=False)
        write_custom_infos(scan, *split_frames(scan))
    register_custom_dataset(a)
    with pytest.raises(ValueError, match="another name in its dataset.yaml"):
        register_custom_dataset(b)
    index = json.load(open(os.path.join(b, "d2_pillars", "datasets.json")))
    assert index["classes"] == list(CLASSES)


def test_splits_from_files(tmp_path):
    root = make_dataset(tmp_path / "sp", 5)
    os.makedirs(os.path.join(root, "splits"))
    with open(os.path.join(root, "splits", "val.txt"), "w") as f:
        f.write("f01\nf03\n")
    scan = scan_dataset(root, progress=False)
    splits, how = split_frames(scan)
    assert how == "ROOT/splits/*.txt"
    assert splits == {"train": ["f00", "f02", "f04"], "val": ["f01", "f03"], "unlabelled": []}
    with open(os.path.join(root, "splits", "train.txt"), "w") as f:
        f.write("f00\nnope\n")
    found = {os.path.basename(p): r for p, r in scan_dataset(root, progress=False).problems}
    assert "1 ids without a points file" in found["train.txt"]
