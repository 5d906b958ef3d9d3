"""LyftEvaluator on the synthetic Lyft set: the SDK's metric, the Kaggle CSV, errors."""

import json
import numpy as np
import os
import pytest

from detectron2.data import DatasetCatalog

from d2_pillars.data.datasets.lyft import LYFT_CLASSES
from d2_pillars.evaluation import (
    LyftEvaluator,
    ResultsFileError,
    evaluate_lyft_results,
    load_lyft_results,
    merge_predictions,
)

from evaluator_io import evaluator_input, prediction_instances, run_evaluator

VAL, TRAIN = "_test_eval_lyft_val", "_test_eval_lyft_train"


@pytest.fixture(scope="module")
def lyft(tmp_path_factory, register_small_synthetic):
    return register_small_synthetic(
        "lyft", tmp_path_factory.mktemp("lyft"), VAL, TRAIN, keyframes_per_scene=4,
        azimuth_steps=256,
    )  # fmt: skip


def predictions(dataset_name, noise=0.0, only_first=False, seed=0):
    """Ground truth boxes (LiDAR frame, every box: Lyft has no point filter) as predictions,
    optionally jittered; with ``only_first`` every other sample has no box."""
    rng = np.random.default_rng(seed)
    pairs = []
    for i, d in enumerate(DatasetCatalog.get(dataset_name)):
        keep = d["gt_labels"] >= 0
        if only_first and i > 0:
            keep[:] = False
        boxes = d["gt_boxes"][keep].astype(np.float64)
        boxes[:, :3] += rng.normal(0, noise, (len(boxes), 3))
        boxes[:, 3:6] *= np.exp(rng.normal(0, noise, (len(boxes), 3)))
        boxes[:, 6] += rng.normal(0, noise, len(boxes))
        scores = rng.random(len(boxes)) if noise else np.ones(len(boxes))
        inst = prediction_instances(boxes, scores, d["gt_labels"][keep])
        pairs.append((evaluator_input(d), inst))
    return pairs


def test_ground_truth_scores_perfectly(lyft, tmp_path):
    res = run_evaluator(LyftEvaluator(VAL, str(tmp_path), method="fast"), predictions(VAL))["lyft"]
    assert res["mAP"] >= 0.99
    per_class = {k[3:]: v for k, v in res.items() if k.startswith("AP-")}
    assert set(per_class) == set(LYFT_CLASSES)  # the generator puts every class in every scene
    assert min(per_class.values()) >= 0.99
    assert res["mAP@0.95"] >= 0.99
    # Files: the SDK-style JSON, the Kaggle CSV (global frame), the per-threshold table.
    tokens = [d["sample_token"] for d in DatasetCatalog.get(VAL)]
    lines = open(tmp_path / "results_lyft.csv").read().splitlines()
    assert lines[0] == "Id,PredictionString"
    assert [line.split(",")[0] for line in lines[1:]] == tokens
    fields = lines[1].split(",")[1].split()
    assert len(fields) % 9 == 0 and fields[8] in per_class
    assert np.hypot(float(fields[1]), float(fields[2])) > 100  # global, not LiDAR, coordinates
    metrics = json.load(open(tmp_path / "lyft_metrics.json"))
    assert metrics["mAP"] == pytest.approx(res["mAP"]) and len(metrics["iou_thresholds"]) == 10
    # Scoring the CSV and the JSON again gives the same numbers.
    for name in ("results_lyft.csv", "results_lyft.json"):
        again = evaluate_lyft_results(str(tmp_path / name), VAL, method="fast")["lyft"]
        assert again == pytest.approx(res)


def test_fast_equals_sdk_through_the_evaluator(lyft, tmp_path):
    pairs = predictions(VAL, noise=0.1, only_first=True)
    fast = run_evaluator(LyftEvaluator(VAL, str(tmp_path), method="fast"), pairs)["lyft"]
    sdk = evaluate_lyft_results(str(tmp_path / "results_lyft.csv"), VAL, method="sdk")["lyft"]
    assert 0.05 < fast["mAP"] < 0.95  # jittered: a non-trivial number
    assert set(fast) == set(sdk)
    for key in fast:
        assert abs(fast[key] - sdk[key]) <= 1e-6, key


def test_missing_samples_and_other_split(lyft, tmp_path):
    with pytest.raises(ResultsFileError, match="1 samples of the split are missing"):
        run_evaluator(LyftEvaluator(VAL, str(tmp_path)), predictions(VAL)[:-1])
    assert not os.path.exists(tmp_path / "results_lyft.csv")
    ev = LyftEvaluator(TRAIN, str(tmp_path / "train"), method="fast")
    run_evaluator(ev, predictions(TRAIN))
    with pytest.raises(ResultsFileError, match=r"results_lyft.csv.*Lyft v1.01-train split 'val'"):
        evaluate_lyft_results(str(tmp_path / "train" / "results_lyft.csv"), VAL, method="fast")


def test_empty_results(lyft, tmp_path):
    pairs = predictions(VAL)
    empty = [(inp, prediction_instances(np.zeros((0, 7)), [], [])) for inp, _ in pairs]
    res = run_evaluator(LyftEvaluator(VAL, str(tmp_path)), empty)["lyft"]
    assert res["mAP"] == 0.0
    assert all(v == [] for v in load_lyft_results(str(tmp_path / "results_lyft.csv")).values())


def test_merge_of_two_ranks(lyft):
    pairs = predictions(VAL, noise=0.05)
    single, ranks = LyftEvaluator(VAL), [LyftEvaluator(VAL), LyftEvaluator(VAL)]
    for i, (inp, inst) in enumerate(pairs):
        single.process([inp], [{"instances": inst}])
        ranks[1 - i % 2].process([inp], [{"instances": inst}])
    expected = merge_predictions([single._predictions])
    assert merge_predictions([r._predictions for r in ranks]) == expected
    assert sum(len(v) for v in expected.values()) > 50


def test_evaluate_results_file_from_config(lyft, tmp_path):
    from detectron2.config import get_cfg

    from d2_pillars.config import add_pillars_config
    from d2_pillars.evaluation import evaluate_results_file

    run_evaluator(LyftEvaluator(VAL, str(tmp_path), method="fast"), predictions(VAL, noise=0.05))
    cfg = get_cfg()
    add_pillars_config(cfg)
    cfg.OUTPUT_DIR, cfg.DATASETS.TEST = str(tmp_path / "out"), (VAL,)
    cfg.TEST.LYFT_MAP_METHOD = "fast"
    res = evaluate_results_file(cfg, str(tmp_path / "results_lyft.csv"))
    assert res == evaluate_lyft_results(str(tmp_path / "results_lyft.json"), VAL, method="fast")
    assert os.path.isfile(tmp_path / "out" / "inference" / VAL / "lyft_metrics.json")
