"""``create_data.py custom``: the derived config (range snapped to the backbone strides, one anchor
per class from the label statistics), --check on broken input (exit 1, every file named, nothing
written), and training + --eval-only on the synthetic own-data set."""

import importlib.util
import json
import numpy as np
import os
import pytest

from detectron2.data import DatasetCatalog

from d2_pillars.engine import load_config
from d2_pillars.engine.own_data import create_custom_data, snap_range
from d2_pillars.synthetic import make_synthetic_custom

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CPU_BASE = os.path.join(REPO, "configs/synthetic/pointpillars_regnetx_400mf_fpn_cpu.yaml")


def _tool(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "tools", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def own_root(tmp_path_factory):
    """The synthetic own-data set, small (3 scenes x 4 frames, 16 beams), with infos + config."""
    root = make_synthetic_custom(
        str(tmp_path_factory.mktemp("own") / "synthetic_custom"),
        num_scenes=3,
        keyframes_per_scene=4,
        num_unlabelled=1,
        num_beams=16,
        azimuth_steps=360,
    )
    assert create_custom_data(root, base_config=CPU_BASE, progress=False, echo=lambda s: None) == 0
    return root


@pytest.mark.parametrize(
    "lo, hi, cell, div", [(-51.3, 50.1, 0.8, 8), (0.0, 69.1, 0.16, 16), (-3.2, 3.2, 0.8, 8)]
)
def test_snap_range(lo, hi, cell, div):
    a, b = snap_range(lo, hi, cell, div)
    assert a <= lo + 1e-9 and b >= hi - 1e-9
    cells = (b - a) / cell
    assert abs(cells - round(cells)) < 1e-6 and round(cells) % div == 0
    assert abs(a / cell - round(a / cell)) < 1e-6  # on the voxel lattice
    assert (b - a) - (hi - lo) < 2 * cell * div  # grown by less than two strides


def _label_stats(root):
    rows = {}
    for name in sorted(os.listdir(os.path.join(root, "labels"))):
        for line in open(os.path.join(root, "labels", name)):
            f = line.split()
            rows.setdefault(f[7], []).append([float(v) for v in f[:7]])
    return {c: np.array(v) for c, v in rows.items()}


def test_derived_config(own_root):
    cfg = load_config(os.path.join(own_root, "d2_pillars", "config.yaml"))
    stats = _label_stats(own_root)
    classes = sorted(stats)
    assert list(cfg.DATASETS.CLASS_NAMES) == classes
    assert cfg.MODEL.ANCHOR3D_HEAD.NUM_CLASSES == len(classes) == 4
    assert cfg.DATASETS.TRAIN == ("synthetic_custom_train",)
    assert cfg.DATASETS.TEST == ("synthetic_custom_val",)
    assert list(cfg.INPUT.POINT_FEATURES) == ["x", "y", "z", "intensity"]
    # the base config's architecture and solver are kept
    base = load_config(CPU_BASE)
    assert cfg.MODEL.BACKBONE.NAME == base.MODEL.BACKBONE.NAME
    assert cfg.SOLVER.MAX_ITER == base.SOLVER.MAX_ITER and cfg.SOLVER.BASE_LR == base.SOLVER.BASE_LR
    # range: the grid is a multiple of the backbone's strides (8 for RegNet s1..s4 = 1,2,2,2)
    r, v = cfg.INPUT.POINT_CLOUD_RANGE, cfg.INPUT.VOXEL_SIZE
    for axis in range(2):
        cells = (r[axis + 3] - r[axis]) / v[axis]
        assert abs(cells - round(cells)) < 1e-6 and round(cells) % 8 == 0
    assert v[2] == pytest.approx(r[5] - r[2])
    centres = np.concatenate(list(stats.values()))
    inside = (centres[:, 0] > r[0]) & (centres[:, 0] < r[3])
    inside &= (centres[:, 1] > r[1]) & (centres[:, 1] < r[4])
    assert inside.mean() >= 0.98
    # one anchor per class: median l, w, h; z = median bottom
    head = cfg.MODEL.ANCHOR3D_HEAD
    for c, size, rng in zip(classes, head.ANCHOR_SIZES, head.ANCHOR_RANGES):
        rows = stats[c]
        np.testing.assert_allclose(size, np.median(rows[:, 3:6], axis=0), atol=2e-3)
        assert rng[2] == rng[5] == pytest.approx(np.median(rows[:, 2] - rows[:, 5] / 2), abs=2e-3)
        assert rng[0] == r[0] and rng[4] == r[4]
    # the model builds on it (scatter grid, head, anchors)
    from d2_pillars.engine import build_pillars_model

    cfg.MODEL.DEVICE = "cpu"
    build_pillars_model(cfg)
    rec = DatasetCatalog.get("synthetic_custom_val")[0]
    assert rec["has_labels"] and rec["point_file"]["point_dim"] == 4


def test_check_names_every_broken_file_and_writes_nothing(tmp_path, capsys):
    root = make_synthetic_custom(
        str(tmp_path / "broken"), num_scenes=2, keyframes_per_scene=3, num_beams=8,
        azimuth_steps=128, formats=("bin", "pcd", "ply", "las"),
    )  # fmt: skip
    create_data = _tool("create_data")
    assert create_data.main(["custom", "--root", root, "--check", "--quiet"]) == 0
    assert not os.path.exists(os.path.join(root, "d2_pillars"))  # --check writes nothing
    points = sorted(os.listdir(os.path.join(root, "points")))
    bin_file = os.path.join(root, "points", next(p for p in points if p.endswith(".bin")))
    data = open(bin_file, "rb").read()
    open(bin_file, "wb").write(data[:-7])
    label_file = os.path.join(root, "labels", sorted(os.listdir(os.path.join(root, "labels")))[1])
    with open(label_file, "a") as f:
        f.write("1.0 2.0 3.0\n")
    for flag in (["--check"], []):  # the normal run refuses as well
        capsys.readouterr()
        assert create_data.main(["custom", "--root", root, "--quiet", *flag]) == 1
        out = capsys.readouterr().out
        assert f"{bin_file}: " in out and "not a whole number of points" in out
        assert f"{label_file}: line " in out and "3 fields, expected 8" in out
        assert "2 problems" in out and "nothing was written" in out
        assert not os.path.exists(os.path.join(root, "d2_pillars"))


def test_train_and_eval_only(own_root, tmp_path):
    """The derived config trains (a few iterations, shrunk grid) and evaluates with the own-data
    evaluator; --eval-only reproduces the metrics."""
    from d2_pillars.engine import argument_parser, main

    config = os.path.join(own_root, "d2_pillars", "config.yaml")
    opts = [
        "MODEL.DEVICE", "cpu",
        "INPUT.POINT_CLOUD_RANGE", "[-16.0, -16.0, -3.0, 16.0, 16.0, 3.0]",
        "INPUT.VOXEL_SIZE", "[1.0, 1.0, 6.0]",
        "MODEL.ANCHOR3D_HEAD.ANCHOR_RANGES", "[[-16.0, -16.0, -1.8, 16.0, 16.0, -1.8]]",
        "MODEL.FPN.OUT_CHANNELS", "16",
        "SOLVER.MAX_ITER", "3", "SOLVER.WARMUP_ITERS", "1", "SOLVER.STEPS", "(2,)",
        "SOLVER.CHECKPOINT_PERIOD", "100", "DATALOADER.NUM_WORKERS", "0",
        "MODEL.ANCHOR3D_HEAD.SCORE_THRESH_TEST", "0.0",
        "MODEL.ANCHOR3D_HEAD.MAX_DETECTIONS_PER_SAMPLE", "20",
        "OUTPUT_DIR", str(tmp_path),
    ]  # fmt: skip
    main(argument_parser().parse_args(["--config-file", config, *opts]))
    metrics_file = tmp_path / "inference" / "synthetic_custom_val" / "custom_metrics.json"
    metrics = json.loads(metrics_file.read_text())
    assert set(metrics["classes"]) == {"Car", "Cyclist", "Pedestrian", "Truck"}
    assert metrics["classes"]["Car"]["iou_loose"] == 0.5 and metrics["recall_positions"] == 40
    assert metrics["classes"]["Car"]["num_gt"] > 0
    res = main(
        argument_parser().parse_args(
            ["--config-file", config, "--eval-only", *opts, "MODEL.WEIGHTS",
             str(tmp_path / "model_final.pth")]
        )
    )  # fmt: skip
    assert res  # the evaluator's results dict
    again = json.loads(metrics_file.read_text())
    assert again["classes"]["Car"]["num_gt"] == metrics["classes"]["Car"]["num_gt"]
    np.testing.assert_allclose(
        again["classes"]["Car"]["AP_BEV_loose"], metrics["classes"]["Car"]["AP_BEV_loose"],
        atol=1e-3,
    )  # fmt: skip
    # the visualizer: ground truth and the model's boxes of a val frame as a BEV PNG
    from d2_pillars.engine.visualize import visualize

    weights = ["MODEL.WEIGHTS", str(tmp_path / "model_final.pth")]
    (png,) = visualize(
        "synthetic_custom_val", indices=[0], config_file=config, opts=opts + weights,
        save_dir=str(tmp_path / "vis"), mode="bev", size=256,
    )  # fmt: skip
    assert os.path.getsize(png) > 1000


def test_derived_config_keeps_the_base_solver(own_root):
    """The written config does not depend on the machine that wrote it: the CPU base config's
    bfloat16 autocast stays (where bfloat16 is emulated, AMP trains in float32 at run time)."""
    from d2_pillars.data.datasets.custom import scan_dataset
    from d2_pillars.engine import load_config, own_data

    scan = scan_dataset(own_root, progress=False)
    cfg, _ = own_data.derive_config(scan, CPU_BASE, {"train": "amp_train", "val": "amp_val"})
    base = load_config(CPU_BASE)
    assert cfg.SOLVER.AMP.ENABLED is base.SOLVER.AMP.ENABLED is True
    assert (cfg.SOLVER.MAX_ITER, cfg.SOLVER.BASE_LR) == (base.SOLVER.MAX_ITER, base.SOLVER.BASE_LR)
