"""tools/demo.py --backend onnxruntime: the trained demo run exported and evaluated with the graph
in onnxruntime gives the torch evaluation's figures."""

import json
import os
import pytest

from d2_pillars.engine import demo

pytest.importorskip("onnxruntime")

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = [
    "DATASETS.TRAIN", '("ort_demo_train",)',
    "DATASETS.TEST", '("ort_demo_val",)',
    "INPUT.POINT_CLOUD_RANGE", "[-16.0, -16.0, -5.0, 16.0, 16.0, 3.0]",
    "INPUT.VOXEL_SIZE", "[1.0, 1.0, 8.0]",
    "INPUT.NUM_SWEEPS", "1",
    "MODEL.ANCHOR3D_HEAD.ANCHOR_RANGES", "[[-16.0, -16.0, -1.8, 16.0, 16.0, -1.8]]",
    "MODEL.FPN.OUT_CHANNELS", "16",
    "SOLVER.MAX_ITER", "6",
    "SOLVER.WARMUP_ITERS", "2",
    "SOLVER.STEPS", "(5,)",
    "MODEL.ANCHOR3D_HEAD.SCORE_THRESH_TEST", "0.0",
    "MODEL.ANCHOR3D_HEAD.MAX_DETECTIONS_PER_SAMPLE", "20",
]  # fmt: skip


def test_exported_demo_run_evaluates_like_torch(register_small_synthetic, tmp_path, monkeypatch):
    from d2_pillars.deploy.evaluate import export_and_evaluate

    root = register_small_synthetic(
        "nuscenes", tmp_path / "synthetic_nuscenes", "ort_demo_val", "ort_demo_train",
        num_scenes=10, keyframes_per_scene=2, azimuth_steps=128,
    )  # fmt: skip
    monkeypatch.setattr(demo, "prepare_synthetic_nuscenes", lambda _: root)
    summary = demo.run_demo(os.path.join(REPO, demo.DEMO_CONFIG), str(tmp_path / "run"), TINY)
    results, report = export_and_evaluate(summary["output_dir"])
    assert report.worst_rel_diff <= 1e-4
    assert os.path.isfile(os.path.join(summary["output_dir"], "onnx", "model.onnx"))
    metrics = results["nuscenes"]
    assert metrics["mAP"] == pytest.approx(summary["mAP"], abs=1e-4)
    assert metrics["NDS"] == pytest.approx(summary["NDS"], abs=1e-4)
    assert metrics["AP-car"] == pytest.approx(summary["car_ap"], abs=1e-4)
    # the same detections, box by box, in both results files
    (torch_boxes, ort_boxes) = [
        _results(os.path.join(summary["output_dir"], *sub, "inference", "ort_demo_val"))
        for sub in ((), ("onnx",))
    ]
    assert torch_boxes.keys() == ort_boxes.keys() and sum(map(len, torch_boxes.values())) > 0
    for token, boxes in torch_boxes.items():
        assert len(boxes) == len(ort_boxes[token])
        for a, b in zip(boxes, ort_boxes[token]):
            assert a["detection_name"] == b["detection_name"]
            assert a["translation"] == pytest.approx(b["translation"], abs=1e-3)
            assert a["detection_score"] == pytest.approx(b["detection_score"], abs=1e-4)


def _results(eval_dir):
    with open(os.path.join(eval_dir, "results_nusc.json")) as f:
        return json.load(f)["results"]
