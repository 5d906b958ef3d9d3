"""BEV images of the worst and best samples, saved by the evaluators next to their metrics."""

import logging
import numpy as np
import os
import cv2
import pytest

from detectron2.data import DatasetCatalog, MetadataCatalog

from d2_pillars.evaluation import LyftEvaluator, NuScenesEvaluator
from d2_pillars.evaluation.examples import select_examples
from d2_pillars.visualization.style import BACKGROUND, class_color

from evaluator_io import evaluator_input, prediction_instances, run_evaluator

NUSC_VAL, NUSC_TRAIN = "_test_bev_examples_nusc_val", "_test_bev_examples_nusc_train"
LYFT_VAL, LYFT_TRAIN = "_test_bev_examples_lyft_val", "_test_bev_examples_lyft_train"
BROKEN = "_test_bev_examples_nusc_missing_lidar"
SIZE = 1024  # render_bev's default image side
# The small synthetic sets' generator arguments (register_small_synthetic: 2 scenes, 8 beams).
TINY = dict(keyframes_per_scene=3, seed=1, azimuth_steps=256)


@pytest.fixture(scope="module")
def nusc(tmp_path_factory, register_small_synthetic):
    root = register_small_synthetic(
        "nuscenes", tmp_path_factory.mktemp("nuscenes"), NUSC_VAL, NUSC_TRAIN, **TINY
    )
    if BROKEN not in DatasetCatalog.list():  # the same split whose LiDAR files are missing
        DatasetCatalog.register(
            BROKEN,
            lambda: [dict(d, lidar_path=d["lidar_path"] + ".gone") for d in _records(NUSC_VAL)],
        )
        meta = MetadataCatalog.get(NUSC_VAL).as_dict()
        meta.pop("name")
        MetadataCatalog.get(BROKEN).set(**meta)
    return root


@pytest.fixture(scope="module")
def lyft(tmp_path_factory, register_small_synthetic):
    return register_small_synthetic(
        "lyft", tmp_path_factory.mktemp("lyft"), LYFT_VAL, LYFT_TRAIN, **TINY
    )


def _records(name):
    return DatasetCatalog.get(name)


def noisy_gt_predictions(dataset_name, empty_index, seed=0, low_score_boxes=0):
    """(inputs, instances) per sample: the labelled ground truth with centre noise (sigma 0.1 m,
    score 0.9) as predictions, except sample ``empty_index``, which predicts nothing (its F1 is
    0; every other sample's is 1). ``low_score_boxes`` extra boxes with score 0.1 per sample."""
    rng = np.random.default_rng(seed)
    pairs = []
    for i, d in enumerate(_records(dataset_name)):
        keep = d["gt_labels"] >= 0
        if i == empty_index:
            keep[:] = False
        boxes = d["gt_boxes"][keep].astype(np.float64)
        boxes[:, :2] += rng.normal(0, 0.1, (len(boxes), 2))
        labels = d["gt_labels"][keep]
        scores = np.full(len(boxes), 0.9)
        if low_score_boxes:
            extra = np.tile(d["gt_boxes"][:1], (low_score_boxes, 1))
            boxes = np.concatenate([boxes, extra])
            labels = np.concatenate([labels, np.zeros(low_score_boxes, np.int64)])
            scores = np.concatenate([scores, np.full(low_score_boxes, 0.1)])
        pairs.append((evaluator_input(d), prediction_instances(boxes, scores, labels)))
    return pairs


def check_image(path, labels):
    image = cv2.imread(path, cv2.IMREAD_COLOR)[..., ::-1]  # RGB
    assert image.shape == (SIZE, SIZE, 3), path
    drawn = np.any(image != np.array(BACKGROUND, np.uint8), axis=-1)
    assert drawn.mean() > 0.01, f"{path} is (nearly) blank"
    assert len(np.unique(image.reshape(-1, 3), axis=0)) > 50, f"{path} has no point colours"
    for label in set(labels.tolist()):  # every ground-truth class is drawn in its colour
        assert np.all(image == np.array(class_color(label), np.uint8), axis=-1).sum() > 20, label


def _empty_index(dataset_name):
    """A sample with at least one labelled box (its all-missing predictions give F1 0)."""
    counts = [int((d["gt_labels"] >= 0).sum()) for d in _records(dataset_name)]
    assert len(counts) >= 2 and max(counts) > 0
    return int(np.argmax(counts))


@pytest.mark.parametrize("kind", ["nuscenes", "lyft"])
def test_worst_and_best_images_are_saved(kind, request, tmp_path):
    request.getfixturevalue("nusc" if kind == "nuscenes" else "lyft")
    name = NUSC_VAL if kind == "nuscenes" else LYFT_VAL
    records = _records(name)
    empty = _empty_index(name)
    out = str(tmp_path / "eval")
    if kind == "nuscenes":
        evaluator = NuScenesEvaluator(name, out, vis_num_samples=1, vis_score_thresh=0.3)
    else:
        evaluator = LyftEvaluator(name, out, method="fast", vis_num_samples=1)
    metrics = run_evaluator(evaluator, noisy_gt_predictions(name, empty))
    assert metrics[kind]["mAP"] > 0  # scoring is unchanged

    vis = os.path.join(out, "vis")
    files = sorted(os.listdir(vis))
    assert len(files) == 2 and all(f.endswith(".png") for f in files), files
    worst = [f for f in files if f.startswith("bev_worst1_")]
    best = [f for f in files if f.startswith("bev_best1_")]
    assert len(worst) == 1 and len(best) == 1, files
    # The sample without predictions is the worst (F1 0); every other one has F1 1, and the
    # best of tied samples is the last one (as save_bev_examples ranks them).
    assert records[empty]["sample_token"] in worst[0]
    best_index = len(records) - 1 if empty != len(records) - 1 else len(records) - 2
    assert records[best_index]["sample_token"] in best[0]
    for f, index in ((worst[0], empty), (best[0], best_index)):
        labels = records[index]["gt_labels"]
        check_image(os.path.join(vis, f), labels[labels >= 0])

    # A second evaluation into the same folder replaces the images instead of piling them up.
    run_evaluator(evaluator, noisy_gt_predictions(name, best_index))
    files = sorted(os.listdir(vis))
    assert len(files) == 2
    assert records[best_index]["sample_token"] in [f for f in files if "worst" in f][0]


def test_no_images_when_disabled(nusc, tmp_path):
    out = tmp_path / "eval"
    evaluator = NuScenesEvaluator(NUSC_VAL, str(out))  # vis_num_samples=0
    pairs = noisy_gt_predictions(NUSC_VAL, _empty_index(NUSC_VAL))
    run_evaluator(evaluator, pairs)
    assert (out / "metrics_summary.json").is_file() and not (out / "vis").exists()
    assert evaluator._vis_predictions == []  # nothing kept for images
    # Without an output_dir there is nowhere to save them: no error, nothing kept.
    evaluator = NuScenesEvaluator(NUSC_VAL, None, vis_num_samples=2)
    assert run_evaluator(evaluator, pairs)["nuscenes"]["mAP"] > 0
    assert evaluator._vis_predictions == []


def test_more_samples_than_the_split(nusc, tmp_path):
    out = tmp_path / "eval"
    evaluator = NuScenesEvaluator(NUSC_VAL, str(out), vis_num_samples=10)
    run_evaluator(evaluator, noisy_gt_predictions(NUSC_VAL, 0))
    files = os.listdir(out / "vis")
    tokens = [d["sample_token"] for d in _records(NUSC_VAL)]
    assert len(files) == len(tokens)  # each sample drawn once
    assert all(sum(t in f for f in files) == 1 for t in tokens)


def test_only_boxes_above_the_threshold_are_kept(nusc, tmp_path):
    evaluator = NuScenesEvaluator(NUSC_VAL, str(tmp_path), vis_num_samples=1, vis_score_thresh=0.3)
    pairs = noisy_gt_predictions(NUSC_VAL, 0, low_score_boxes=3)
    for inp, inst in pairs:
        evaluator.process([inp], [{"instances": inst}])
    assert [t for t, _ in evaluator._vis_predictions] == [inp["sample_token"] for inp, _ in pairs]
    for (_, kept), (_, inst) in zip(evaluator._vis_predictions, pairs):
        high = inst.scores.numpy() >= 0.3
        assert set(kept) == {"boxes", "labels", "scores"} and "points" not in kept
        np.testing.assert_array_equal(kept["boxes"], inst.pred_boxes3d.tensor.numpy()[high])
        np.testing.assert_array_equal(kept["labels"], inst.pred_classes.numpy()[high])
        assert kept["scores"].min(initial=1.0) >= 0.3


def test_a_rendering_failure_keeps_the_metrics(nusc, tmp_path, caplog):
    out = tmp_path / "eval"
    evaluator = NuScenesEvaluator(BROKEN, str(out), vis_num_samples=1)
    reference = run_evaluator(NuScenesEvaluator(NUSC_VAL), noisy_gt_predictions(NUSC_VAL, 0))
    with caplog.at_level(logging.WARNING, logger="d2_pillars.evaluation.common"):
        metrics = run_evaluator(evaluator, noisy_gt_predictions(BROKEN, 0))
    assert metrics["nuscenes"] == pytest.approx(reference["nuscenes"])
    assert (out / "metrics_summary.json").is_file()
    assert "Could not save the BEV example images" in caplog.text and ".gone" in caplog.text
    assert not (out / "vis").exists()


def test_select_examples_matches_save_bev_examples():
    scores = [0.5, 0.0, 1.0, 0.5, 1.0, 0.2]
    assert select_examples(scores, 1) == [1, 4]  # worst; best (the last of the tied 1.0s)
    assert select_examples(scores, 2) == [1, 5, 2, 4]
    assert select_examples(scores, 10) == [1, 5, 0, 3, 2, 4]
    assert select_examples([], 3) == []


def test_invalid_arguments(nusc):
    with pytest.raises(ValueError, match="VIS_NUM_SAMPLES"):
        NuScenesEvaluator(NUSC_VAL, "/tmp/x", vis_num_samples=-1)
    with pytest.raises(ValueError, match="VIS_SCORE_THRESH"):
        NuScenesEvaluator(NUSC_VAL, "/tmp/x", vis_num_samples=1, vis_score_thresh=float("nan"))
