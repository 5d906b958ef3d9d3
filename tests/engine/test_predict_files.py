"""``tools/predict.py``: every point-file format in, 9-field label lines + predictions.json + BEV
PNGs out; georeferenced LAS boxes map back with the recorded offset."""

import importlib.util
import json
import numpy as np
import os
import pytest

from d2_pillars.engine import load_config
from d2_pillars.engine.predict_files import cloud_for_model, collect_inputs, predict_files

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CPU_BASE = os.path.join(REPO, "configs/synthetic/pointpillars_regnetx_400mf_fpn_cpu.yaml")
# An untrained tiny model that returns its top boxes whatever their score.
TINY = [
    "MODEL.DEVICE", "cpu",
    "INPUT.POINT_CLOUD_RANGE", "[-16.0, -16.0, -5.0, 16.0, 16.0, 3.0]",
    "INPUT.VOXEL_SIZE", "[1.0, 1.0, 8.0]",
    "MODEL.ANCHOR3D_HEAD.ANCHOR_RANGES", "[[-16.0, -16.0, -1.8, 16.0, 16.0, -1.8]]",
    "MODEL.FPN.OUT_CHANNELS", "16",
    "MODEL.ANCHOR3D_HEAD.SCORE_THRESH_TEST", "0.0",
    "MODEL.ANCHOR3D_HEAD.MAX_DETECTIONS_PER_SAMPLE", "5",
]  # fmt: skip


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The same cloud as .bin, .npy, .pcd, .ply, .las, plus a georeferenced .laz."""
    import laspy
    from plyfile import PlyData, PlyElement
    from pypcd4 import Encoding, PointCloud

    d = tmp_path_factory.mktemp("clouds")
    rng = np.random.default_rng(0)
    cloud = np.c_[
        rng.uniform(-15, 15, (3000, 2)), rng.uniform(-1.8, 0.5, 3000), rng.uniform(0, 255, 3000)
    ].astype(np.float32)
    cloud.tofile(d / "a.bin")
    np.save(d / "b.npy", cloud)
    PointCloud.from_xyzi_points(cloud).save(str(d / "c.pcd"), encoding=Encoding.BINARY_COMPRESSED)
    vertex = np.empty(len(cloud), dtype=[(n, "f4") for n in ("x", "y", "z", "intensity")])
    for i, n in enumerate(vertex.dtype.names):
        vertex[n] = cloud[:, i]
    PlyData([PlyElement.describe(vertex, "vertex")]).write(str(d / "d.ply"))
    origin = np.array([654321.0, 4321987.0, 0.0])
    for name, shift in (("e.las", np.zeros(3)), ("geo.laz", origin)):
        header = laspy.LasHeader(point_format=1, version="1.2")
        header.scales, header.offsets = np.full(3, 0.001), shift
        las = laspy.LasData(header)
        las.x, las.y, las.z = (cloud[:, i].astype(np.float64) + shift[i] for i in range(3))
        las.intensity = (cloud[:, 3] * 257).astype(np.uint16)
        las.write(str(d / name))
    return d


def test_cloud_for_model_fills_missing_features():
    pts = np.arange(8, dtype=np.float32).reshape(2, 4)
    out = cloud_for_model(pts, ["x", "y", "z", "time_lag", "intensity", "ring"])
    np.testing.assert_array_equal(out, [[0, 1, 2, 0, 3, 0], [4, 5, 6, 0, 7, 0]])


def test_predict_every_format(files, tmp_path):
    from d2_pillars.deploy import build_predictor

    cfg = load_config(
        CPU_BASE,
        TINY
        + [
            "INPUT.LOAD_DIM",
            "4",
            "INPUT.POINT_FEATURES",
            "['x', 'y', 'z', 'intensity']",
            "INPUT.NUM_SWEEPS",
            "0",
        ],
    )
    results = predict_files(
        cfg, [str(files)], str(tmp_path), predictor_factory=build_predictor, progress=False
    )
    assert sorted(results) == ["a", "b", "c", "d", "e", "geo"]
    classes = set(cfg.DATASETS.CLASS_NAMES)
    boxes_by_id = {}
    for fid in results:
        lines = (tmp_path / f"{fid}.txt").read_text().splitlines()
        assert len(lines) == 5
        rows = []
        for line in lines:
            fields = line.split()
            assert len(fields) == 9 and fields[7] in classes
            rows.append([float(v) for v in fields[:7] + fields[8:]])
        boxes_by_id[fid] = np.array(rows)
        assert (np.array(rows)[:, 3:6] > 0).all()
        assert os.path.getsize(tmp_path / f"{fid}.png") > 1000
    # the same float32 cloud in every lossless format gives the same boxes (LAS stores 1 mm
    # steps: its near-tie scores may pick other top boxes, so it is not compared)
    for fid in ("b", "c", "d"):
        np.testing.assert_allclose(boxes_by_id[fid], boxes_by_id["a"], atol=1e-3)
    content = json.loads((tmp_path / "predictions.json").read_text())
    geo = content["files"]["geo"]
    assert geo["offset"][0] == pytest.approx(654321.0, abs=20)
    assert geo["offset"][1] == pytest.approx(4321987.0, abs=20)
    # txt lines are in the file's coordinates: recentred boxes + offset
    np.testing.assert_allclose(
        boxes_by_id["geo"][:, :3], np.array(geo["boxes"])[:, :3] + geo["offset"], atol=1e-3
    )
    assert np.abs(np.array(geo["boxes"])[:, :2]).max() < 100  # the model saw a recentred cloud


def test_cli_nuscenes_features_score_thresh_no_images(files, tmp_path):
    """A model with the seed configs' features (x, y, z, time_lag): time_lag is 0 for files."""
    spec = importlib.util.spec_from_file_location("predict", os.path.join(REPO, "tools/predict.py"))
    predict = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(predict)
    argv = [
        "--config-file",
        CPU_BASE,
        "--input",
        str(files / "c.pcd"),
        str(files / "d.ply"),
        "--output",
        str(tmp_path),
        *TINY,  # KEY VALUE pairs, then options again
        "--no-images",
        "--score-thresh",
        "0.0",
        "--quiet",
    ]
    assert predict.main(argv) == 0
    assert sorted(os.listdir(tmp_path)) == ["c.txt", "d.txt", "predictions.json"]
    for name in ("c.txt", "d.txt"):
        assert all(len(line.split()) == 9 for line in (tmp_path / name).read_text().splitlines())
    with pytest.raises(ValueError, match="unsupported extension"):
        collect_inputs([str(files / "a.bin"), __file__])
