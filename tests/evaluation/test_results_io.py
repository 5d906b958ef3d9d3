"""Results files: atomic writers, readers, format errors, token checks."""

import json
import math
import numpy as np
import os
import pytest
from pyquaternion import Quaternion

from d2_pillars.evaluation.lyft_map import lyft_map
from d2_pillars.evaluation.results_io import (
    NUSCENES_META,
    ResultsFileError,
    check_sample_tokens,
    load_lyft_results,
    load_nuscenes_results,
    quaternion_yaw,
    write_lyft_csv,
    write_lyft_results,
    write_nuscenes_results,
)


def _lyft_results(seed=0, num_samples=6):
    rng = np.random.default_rng(seed)
    results = {}
    for s in range(num_samples):
        token = f"tok{s}"
        boxes = []
        for _ in range(s % 3 * 2):  # some samples are empty
            yaw = float(rng.uniform(-np.pi, np.pi))
            boxes.append(
                {
                    "sample_token": token,
                    "translation": (rng.uniform(-50, 50, 3) + [2000.0, 900.0, -20.0]).tolist(),
                    "size": rng.uniform(0.5, 5, 3).tolist(),
                    "rotation": [math.cos(yaw / 2), 0.0, 0.0, math.sin(yaw / 2)],
                    "name": ["car", "pedestrian", "other_vehicle"][int(rng.integers(3))],
                    "score": float(rng.random()),
                }
            )
        results[token] = boxes
    return results


def test_nuscenes_roundtrip(tmp_path):
    box = {
        "sample_token": "a",
        "translation": [1.0, 2.0, 3.0],
        "size": [1.0, 2.0, 1.5],
        "rotation": [1.0, 0.0, 0.0, 0.0],
        "velocity": [0.0, 0.5],
        "detection_name": "car",
        "detection_score": 0.5,
        "attribute_name": "vehicle.moving",
    }
    path = str(tmp_path / "r.json")
    write_nuscenes_results(path, {"a": [box], "b": []})
    results, meta = load_nuscenes_results(path)
    assert results == {"a": [box], "b": []}
    assert meta == NUSCENES_META and meta["use_lidar"] and not meta["use_camera"]


def test_nuscenes_format_errors(tmp_path):
    path = tmp_path / "bad.json"
    with pytest.raises(ResultsFileError, match="does not exist"):
        load_nuscenes_results(str(path))
    path.write_text("{not json")
    with pytest.raises(ResultsFileError, match="bad.json.*not valid JSON"):
        load_nuscenes_results(str(path))
    path.write_text(json.dumps({"a": []}))
    with pytest.raises(ResultsFileError, match="'results'"):
        load_nuscenes_results(str(path))
    path.write_text(json.dumps({"results": {"a": [{"sample_token": "a"}]}, "meta": {}}))
    with pytest.raises(ResultsFileError, match="lacks the fields"):
        load_nuscenes_results(str(path))
    path.write_text(json.dumps({"results": {"a": []}}))
    with pytest.raises(ResultsFileError, match="'meta'"):
        load_nuscenes_results(str(path))


def test_interrupted_write_leaves_old_file(tmp_path):
    path = str(tmp_path / "results_nusc.json")
    write_nuscenes_results(path, {"a": []})
    before = open(path).read()
    bad = {"a": [{"sample_token": "a", "translation": object()}]}  # fails mid-serialisation
    with pytest.raises(TypeError):
        write_nuscenes_results(path, bad)
    assert open(path).read() == before
    assert os.listdir(tmp_path) == ["results_nusc.json"]  # no temporary file left
    with pytest.raises(TypeError):
        write_nuscenes_results(str(tmp_path / "new.json"), bad)
    assert not os.path.exists(tmp_path / "new.json")


def test_lyft_csv_roundtrip_keeps_metric(tmp_path):
    results = _lyft_results()
    csv_path, json_path = str(tmp_path / "sub.csv"), str(tmp_path / "sub.json")
    order = ["extra"] + list(results)[::-1]  # e.g. Kaggle's sample_submission order
    write_lyft_csv(csv_path, results, order)
    write_lyft_results(json_path, results)
    lines = open(csv_path).read().splitlines()
    assert lines[0] == "Id,PredictionString"
    assert [line.split(",")[0] for line in lines[1:]] == order
    first = results["tok1"][0]
    row = dict(line.split(",", 1) for line in lines[1:])["tok1"].split()
    assert len(row) == 9 * len(results["tok1"])
    assert float(row[0]) == first["score"] and row[8] == first["name"]
    assert [float(v) for v in row[1:7]] == first["translation"] + first["size"]
    assert float(row[7]) == pytest.approx(Quaternion(first["rotation"]).yaw_pitch_roll[0])

    from_csv, from_json = load_lyft_results(csv_path), load_lyft_results(json_path)
    assert from_json == results
    assert from_csv["extra"] == [] and set(from_csv) == set(order)
    for token, boxes in results.items():
        for a, b in zip(boxes, from_csv[token]):
            assert a["translation"] == b["translation"] and a["size"] == b["size"]
            assert a["name"] == b["name"] and a["score"] == b["score"]
            assert abs(np.dot(a["rotation"], b["rotation"])) == pytest.approx(1.0)
    # The metric of a file does not depend on its format.
    gt = [dict(b) for boxes in results.values() for b in boxes]
    preds_csv = [b for boxes in from_csv.values() for b in boxes]
    preds_json = [b for boxes in from_json.values() for b in boxes]
    assert lyft_map(gt, preds_csv)["mAP"] == pytest.approx(lyft_map(gt, preds_json)["mAP"])
    assert lyft_map(gt, preds_json)["mAP"] > 0.99


def test_lyft_csv_errors(tmp_path):
    path = tmp_path / "x.csv"
    path.write_text("token,boxes\na,\n")
    with pytest.raises(ResultsFileError, match="x.csv.*Id,PredictionString"):
        load_lyft_results(str(path))
    path.write_text("Id,PredictionString\na,0.5 1 2 3 1 1 1 0\n")
    with pytest.raises(ResultsFileError, match="x.csv:2.*9 fields"):
        load_lyft_results(str(path))
    with pytest.raises(ResultsFileError, match="not rows"):
        write_lyft_csv(str(tmp_path / "y.csv"), {"a": []}, ["b"])


def test_quaternion_yaw_matches_pyquaternion():
    rng = np.random.default_rng(0)
    q = rng.normal(size=(20, 4))
    ref = [Quaternion(x).yaw_pitch_roll[0] for x in q]
    np.testing.assert_allclose(quaternion_yaw(q), ref, atol=1e-12)


def test_check_sample_tokens():
    check_sample_tokens(["a", "b"], ["b", "a"], source="f.json", split="val")
    with pytest.raises(
        ResultsFileError, match=r"f.json.*val \(3 samples\).*1 samples of the split"
    ):
        check_sample_tokens(["a", "b"], ["a", "b", "c"], source="f.json", split="val")
    with pytest.raises(ResultsFileError, match="3 samples are not in the split.*another split"):
        check_sample_tokens(["x", "y", "z"], ["a"], source="f.json", split="val")
