"""The synthetic world in the own-data layout: mixed formats, unlabelled frames, scene splits,
labels that match the points, and output that depends on the arguments only."""

import filecmp
import os
import pytest

from d2_pillars.data.datasets.custom import scan_dataset, split_frames
from d2_pillars.synthetic import make_synthetic_custom

KW = dict(num_scenes=3, keyframes_per_scene=3, num_unlabelled=2, num_beams=8, azimuth_steps=256)


def test_layout_and_labels(tmp_path):
    root = make_synthetic_custom(str(tmp_path / "a"), **KW)
    points = sorted(os.listdir(os.path.join(root, "points")))
    assert len(points) == 9
    assert {p.rsplit(".", 1)[1] for p in points} == {"bin", "npy", "pcd", "ply", "las"}
    labels = sorted(os.listdir(os.path.join(root, "labels")))
    assert len(labels) == 7 and "000_002.txt" not in labels and "001_002.txt" not in labels
    val = open(os.path.join(root, "splits", "val.txt")).read().split()
    assert val == ["002_000", "002_001", "002_002"]  # the last scene: no scene in both splits
    scan = scan_dataset(root, progress=False)
    assert not scan.problems, scan.problems
    assert set(scan.class_counts()) <= {"Car", "Truck", "Pedestrian", "Cyclist"}
    assert scan.class_counts().get("Car", 0) > 0
    boxes = [n for f in scan.labelled for n in f.num_box_points]
    assert sum(b > 0 for b in boxes) >= 0.9 * len(boxes)  # labelled objects are hit by the LiDAR
    splits, _ = split_frames(scan)
    assert splits["unlabelled"] == ["000_002", "001_002"]
    # the same arguments: returns at once; other arguments refuse without force
    assert make_synthetic_custom(root, **KW) == root
    with pytest.raises(FileExistsError, match="other arguments"):
        make_synthetic_custom(root, **dict(KW, seed=1))


def test_deterministic(tmp_path):
    a = make_synthetic_custom(str(tmp_path / "a"), **KW)
    b = make_synthetic_custom(str(tmp_path / "b"), **KW)
    for sub in ("points", "labels", "splits"):
        names = sorted(os.listdir(os.path.join(a, sub)))
        match, mismatch, errors = filecmp.cmpfiles(
            os.path.join(a, sub), os.path.join(b, sub), names, shallow=False
        )
        assert not mismatch and not errors, (sub, mismatch, errors)
