"""tools/demo.py --backend onnxruntime: the trained demo run exported and evaluated with the graph
in onnxruntime gives the torch evaluation's figures."""

import json
import numpy as np
import os
import pytest

from d2_pillars.engine import demo

from detections import assert_same_arrays

pytest.importorskip("onnxruntime")

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_exported_demo_run_evaluates_like_torch(
    register_small_synthetic, tiny_demo_opts, tmp_path, monkeypatch
):
    from d2_pillars.deploy.evaluate import export_and_evaluate

    root = register_small_synthetic(
        "nuscenes", tmp_path / "synthetic_nuscenes", "ort_demo_val", "ort_demo_train",
        num_scenes=10, keyframes_per_scene=2, azimuth_steps=128,
    )  # fmt: skip
    monkeypatch.setattr(demo, "prepare_synthetic_nuscenes", lambda _: root)
    tiny = tiny_demo_opts("ort_demo_train", "ort_demo_val", max_iter=6)
    summary = demo.run_demo(os.path.join(REPO, demo.DEMO_CONFIG), str(tmp_path / "run"), tiny)
    results, report = export_and_evaluate(summary["output_dir"])
    assert report.worst_rel_diff <= 1e-4
    assert os.path.isfile(os.path.join(summary["output_dir"], "onnx", "model.onnx"))
    metrics = results["nuscenes"]
    assert metrics["mAP"] == pytest.approx(summary["mAP"], abs=1e-4)
    assert metrics["NDS"] == pytest.approx(summary["NDS"], abs=1e-4)
    assert metrics["AP-car"] == pytest.approx(summary["car_ap"], abs=1e-4)
    # the same detections in both results files, matched one to one (order is not compared:
    # near-tied scores may come out in either order; at the per-sample limit either may stay)
    (torch_boxes, ort_boxes) = [
        _results(os.path.join(summary["output_dir"], *sub, "inference", "ort_demo_val"))
        for sub in ((), ("onnx",))
    ]
    assert torch_boxes.keys() == ort_boxes.keys() and sum(map(len, torch_boxes.values())) > 0
    names = sorted({b["detection_name"] for boxes in torch_boxes.values() for b in boxes})
    for token, boxes in torch_boxes.items():
        if not boxes and not ort_boxes[token]:
            continue
        assert_same_arrays(
            _arrays(boxes, names),
            _arrays(ort_boxes[token], names),
            atol=1e-3,
            score_atol=1e-4,
            max_detections=20,  # tiny_demo_opts' MODEL.ANCHOR3D_HEAD.MAX_DETECTIONS_PER_SAMPLE
            max_unmatched_fraction=0.1,
        )


def _arrays(boxes, names):
    """``(translation + size (K, 6), scores (K,), label index (K,))`` of results-file boxes."""
    geometry = np.array([b["translation"] + b["size"] for b in boxes], np.float64).reshape(-1, 6)
    scores = np.array([b["detection_score"] for b in boxes], np.float64)
    labels = np.array([names.index(b["detection_name"]) for b in boxes], np.int64)
    return geometry, scores, labels


def _results(eval_dir):
    with open(os.path.join(eval_dir, "results_nusc.json")) as f:
        return json.load(f)["results"]
