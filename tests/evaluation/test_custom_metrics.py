"""The own-data AP (``evaluation.custom_metrics``) against answers computed by hand.

R40 on paper: precision at recall r is the best precision at any recall >= r; AP is its mean at
r = 1/40 .. 40/40.
"""

import logging
import math
import numpy as np
import pytest

from d2_pillars.evaluation import (
    DISTANCE_BINS,
    average_precision,
    class_iou_thresholds,
    default_iou_thresholds,
    evaluate_detections,
    greedy_match,
)

CLASSES = ["Car", "Pedestrian", "Cyclist"]
CAR, PED, CYC = 0, 1, 2
AP_KEYS = ("AP_3D", "AP_BEV", "AP_3D_loose", "AP_BEV_loose")


def car(x, y=0.0, yaw=0.0, z=0.0):
    """A 4 x 2 x 1.5 m box (centre x, y, z)."""
    return [x, y, z, 4.0, 2.0, 1.5, yaw]


def ped(x, y=0.0):
    return [x, y, 0.0, 0.8, 0.8, 1.7, 0.0]


def gt_frame(boxes, labels):
    return {"boxes": np.asarray(boxes, np.float64).reshape(-1, 7), "labels": np.asarray(labels)}


def pred_frame(boxes, labels, scores):
    out = gt_frame(boxes, labels)
    out["scores"] = np.asarray(scores, np.float64)
    return out


# ------------------------------------------------------------------------------ AP on paper
def test_one_perfect_prediction_is_1():
    assert average_precision([0.9], [True], 1) == pytest.approx(1.0)


def test_false_positive_ranked_first():
    # 2 gts; FP 0.9, TP 0.8, TP 0.7: points (r 0, p 0), (0.5, 1/2), (1, 2/3); the interpolated
    # precision is 2/3 at every recall position -> AP = 2/3.
    assert average_precision([0.9, 0.8, 0.7], [False, True, True], 2) == pytest.approx(2 / 3)


def test_false_positive_ranked_between():
    # 2 gts; TP 0.9, FP 0.8, TP 0.7: p = 1 for r <= 1/2 (20 positions), 2/3 above (20 positions)
    # -> AP = (20 + 20 * 2/3) / 40 = 5/6.
    assert average_precision([0.9, 0.8, 0.7], [True, False, True], 2) == pytest.approx(5 / 6)


def test_partial_recall_counts_40_positions():
    # 3 gts, 1 TP: recall 1/3 reaches positions 1..13 (13/40 <= 1/3 < 14/40) -> AP = 13/40.
    # (The 11-point protocol would give 4/11.)
    assert average_precision([0.5], [True], 3) == pytest.approx(13 / 40)
    # 2 gts, 1 TP: positions 1..20 -> 1/2 exactly.
    assert average_precision([0.5, 0.1], [True, False], 2) == pytest.approx(0.5)


def test_no_predictions_and_no_ground_truth():
    assert average_precision([], [], 3) == 0.0
    assert average_precision([0.3, 0.2], [False, False], 3) == 0.0
    assert average_precision([0.3], [False], 0) is None
    assert average_precision([], [], 0) is None


def test_tied_scores_enter_together():
    # TP and FP at the same score: one operating point (r 1, p 1/2) whatever their order.
    assert average_precision([0.5, 0.5], [True, False], 1) == pytest.approx(0.5)
    assert average_precision([0.5, 0.5], [False, True], 1) == pytest.approx(0.5)


def test_recall_positions_parameter():
    # 3 gts, 1 TP with 11 positions 1/11..11/11: 3 of them (<= 1/3) -> 3/11.
    assert average_precision([0.5], [True], 3, num_positions=11) == pytest.approx(3 / 11)


# ------------------------------------------------------------------------------ matching
def test_greedy_match_takes_the_best_free_box():
    iou = np.array([[0.8, 0.6], [0.9, 0.55], [0.7, 0.1]])
    # Row 0 (highest score) takes column 0 although row 1 overlaps it more; row 1 gets column 1.
    np.testing.assert_array_equal(greedy_match(iou, 0.5), [0, 1, -1])
    np.testing.assert_array_equal(greedy_match(iou, 0.65), [0, -1, -1])
    np.testing.assert_array_equal(greedy_match(np.zeros((2, 0)), 0.5), [-1, -1])


def test_greedy_match_prefers_preferred_boxes():
    iou = np.array([[0.9, 0.6]])
    np.testing.assert_array_equal(greedy_match(iou, 0.5, np.array([False, True])), [1])
    np.testing.assert_array_equal(greedy_match(iou, 0.7, np.array([False, True])), [0])


def _reference_match(iou, threshold, preferred):
    """The greedy rule written plainly: per row, the best free preferred column at or above the
    threshold, else the best free other column."""
    match, free = [], set(range(iou.shape[1]))
    for row in iou:
        ok = [j for j in sorted(free) if row[j] >= threshold]
        pool = [j for j in ok if preferred[j]] or ok
        j = max(pool, key=lambda k: (row[k], -k)) if pool else -1
        match.append(j)
        free.discard(j)
    return match


def test_greedy_match_equals_the_plain_rule_on_random_matrices():
    rng = np.random.default_rng(0)
    for _ in range(200):
        p, g = rng.integers(0, 7, size=2)
        iou = rng.uniform(0, 1, (p, g)) * (rng.uniform(0, 1, (p, g)) < 0.6)
        iou = np.round(iou, 1)  # ties
        preferred = rng.uniform(0, 1, g) < 0.6
        threshold = rng.choice([0.25, 0.5, 0.7])
        got = greedy_match(iou, threshold, preferred).tolist()
        assert got == _reference_match(iou, threshold, preferred)
        assert greedy_match(iou, threshold).tolist() == _reference_match(iou, threshold, [1] * g)


# ------------------------------------------------------------------------------ thresholds
def test_default_thresholds():
    for name in ("Car", "vehicle", "TRUCK", "Bus"):
        assert default_iou_thresholds(name) == (0.7, 0.5)
    for name in ("Pedestrian", "Cyclist", "Traffic_cone", "forklift"):
        assert default_iou_thresholds(name) == (0.5, 0.25)


def test_configured_thresholds_are_checked(caplog):
    got = class_iou_thresholds(CLASSES, {"Car": [0.6, 0.4]})
    assert got == {"Car": (0.6, 0.4), "Pedestrian": (0.5, 0.25), "Cyclist": (0.5, 0.25)}
    for bad in ([0.5], [0.5, 0.3, 0.1], [0.0, 0.0], [1.5, 0.5], ["a", 0.5], 0.7):
        with pytest.raises(ValueError, match="class_iou_thresholds: {Car: \\[0.7, 0.5\\]}"):
            class_iou_thresholds(CLASSES, {"Car": bad})
    # Not worth failing an evaluation after training for: warnings.
    with caplog.at_level(logging.WARNING, logger="d2_pillars.evaluation.custom_metrics"):
        assert class_iou_thresholds(CLASSES, {"Tram": [0.5, 0.3]})["Car"] == (0.7, 0.5)
        assert class_iou_thresholds(CLASSES, {"Car": [0.4, 0.6]})["Car"] == (0.4, 0.6)
    assert "['Tram'] are ignored" in caplog.text and "the loose threshold is the higher" in (
        caplog.text
    )


# ------------------------------------------------------------------------------ evaluation
def _one_frame(gt_boxes, gt_labels, pred_boxes, pred_labels, scores, **kwargs):
    return evaluate_detections(
        {"f": gt_frame(gt_boxes, gt_labels)},
        {"f": pred_frame(pred_boxes, pred_labels, scores)},
        CLASSES,
        **kwargs,
    )


def _assert_all_one(entry):
    for key in AP_KEYS:
        assert entry[key] == pytest.approx(1.0), key


def test_ground_truth_as_predictions_gives_1_everywhere():
    rng = np.random.default_rng(0)
    gts, preds = {}, {}
    for i in range(5):
        boxes, labels = [], []
        for d, cls in ((12.0, CAR), (38.0, CAR), (70.0, CAR), (8.0, PED), (45.0, PED), (56, PED)):
            for cls_ in (cls, CYC):
                a = rng.uniform(-math.pi, math.pi)
                r = d + rng.uniform(-4, 4)
                dims = [4.2, 1.8, 1.6] if cls_ == CAR else [0.7, 0.7, 1.8]
                boxes.append([r * math.cos(a), r * math.sin(a), rng.uniform(-1, 0)] + dims)
                boxes[-1].append(rng.uniform(-math.pi, math.pi))
                labels.append(cls_)
        gts[f"f{i}"] = gt_frame(boxes, labels)
        preds[f"f{i}"] = pred_frame(boxes, labels, rng.uniform(0.1, 1.0, len(boxes)))
    result = evaluate_detections(gts, preds, CLASSES)
    assert result["mAP_3D"] == pytest.approx(1.0) and result["mAP_BEV"] == pytest.approx(1.0)
    for name in CLASSES:
        entry = result["classes"][name]
        _assert_all_one(entry)
        assert set(entry["by_distance"]) == {b[0] for b in DISTANCE_BINS}
        for b in entry["by_distance"].values():
            assert b["num_gt"] > 0
            _assert_all_one(b)
    assert result["classes"]["Car"]["num_gt"] == 15
    assert result["classes"]["Pedestrian"]["num_gt"] == 15
    assert result["classes"]["Cyclist"]["num_gt"] == 30


def test_iou_between_thresholds_counts_only_at_the_loose_one():
    # A car shifted 1 m along its length: IoU (4 - 1) / (4 + 1) = 0.6 in BEV and in 3D.
    result = _one_frame([car(10.0)], [CAR], [car(11.0)], [CAR], [0.9])
    entry = result["classes"]["Car"]
    assert (entry["iou"], entry["iou_loose"]) == (0.7, 0.5)
    assert entry["AP_BEV"] == 0.0 and entry["AP_3D"] == 0.0
    assert entry["AP_BEV_loose"] == pytest.approx(1.0)
    assert entry["AP_3D_loose"] == pytest.approx(1.0)
    # With the car thresholds set to (0.55, 0.3), the same box counts at both.
    relaxed = _one_frame(
        [car(10.0)], [CAR], [car(11.0)], [CAR], [0.9], iou_thresholds={"Car": (0.55, 0.3)}
    )
    _assert_all_one(relaxed["classes"]["Car"])
    assert relaxed["classes"]["Car"]["iou"] == 0.55


def test_pedestrian_default_thresholds():
    # 0.8 m square shifted 0.4 m: IoU 0.4 / 1.2 = 1/3: below 0.5, above 0.25.
    entry = _one_frame([ped(5.0)], [PED], [ped(5.4)], [PED], [0.9])["classes"]["Pedestrian"]
    assert entry["AP_BEV"] == 0.0 and entry["AP_BEV_loose"] == pytest.approx(1.0)


def test_3d_iou_sees_height_errors_that_bev_does_not():
    # Same footprint, lifted by half the height: BEV IoU 1, 3D IoU 1/3.
    entry = _one_frame([car(10.0)], [CAR], [car(10.0, z=0.75)], [CAR], [0.9])["classes"]["Car"]
    assert entry["AP_BEV"] == pytest.approx(1.0) and entry["AP_BEV_loose"] == pytest.approx(1.0)
    assert entry["AP_3D"] == 0.0 and entry["AP_3D_loose"] == 0.0


def test_rotated_prediction_of_a_square_matches():
    # A pedestrian square rotated by 90 degrees is the same footprint (IoU 1).
    entry = _one_frame([ped(5.0)], [PED], [[5.0, 0, 0, 0.8, 0.8, 1.7, math.pi / 2]], [PED], [0.5])
    _assert_all_one(entry["classes"]["Pedestrian"])


def test_class_must_agree():
    # A perfect box with the wrong class: a miss for Car and a FP for Pedestrian.
    result = _one_frame([car(10.0)], [CAR], [car(10.0)], [PED], [0.9])
    assert result["classes"]["Car"]["AP_BEV"] == 0.0
    assert result["classes"]["Pedestrian"]["AP_BEV"] is None
    assert result["classes"]["Pedestrian"]["num_gt"] == 0


def test_one_false_positive_of_higher_score_across_frames():
    # Frame a: FP 0.9 far away, TP 0.7; frame b: TP 0.8 -> ranked FP, TP, TP over 2 gts -> 2/3.
    gts = {"a": gt_frame([car(10.0)], [CAR]), "b": gt_frame([car(20.0, 5.0)], [CAR])}
    preds = {
        "a": pred_frame([car(-15.0), car(10.0)], [CAR, CAR], [0.9, 0.7]),
        "b": pred_frame([car(20.0, 5.0)], [CAR], [0.8]),
    }
    entry = evaluate_detections(gts, preds, CLASSES)["classes"]["Car"]
    assert entry["AP_BEV"] == pytest.approx(2 / 3) and entry["AP_3D"] == pytest.approx(2 / 3)
    assert entry["num_gt"] == 2


def test_duplicate_prediction_is_a_false_positive():
    # Two boxes on one gt: the higher score is the TP, the duplicate a FP -> points (1, 1) then
    # (1, 1/2); the envelope keeps 1 -> AP 1. Reversed scores of a worse duplicate: same.
    result = _one_frame([car(10.0)], [CAR], [car(10.0), car(10.2)], [CAR, CAR], [0.9, 0.8])
    assert result["classes"]["Car"]["AP_BEV"] == pytest.approx(1.0)
    # The duplicate scored first and off by IoU 0.6 (< 0.7): FP 0.9 then TP 0.8 -> AP 1/2.
    result = _one_frame([car(10.0)], [CAR], [car(11.0), car(10.0)], [CAR, CAR], [0.9, 0.8])
    assert result["classes"]["Car"]["AP_BEV"] == pytest.approx(0.5)
    assert result["classes"]["Car"]["AP_BEV_loose"] == pytest.approx(1.0)


def test_no_predictions_give_0_and_classes_without_gt_are_left_out_of_the_map():
    result = evaluate_detections({"a": gt_frame([car(10.0), ped(5.0)], [CAR, PED])}, {}, CLASSES)
    assert result["classes"]["Car"]["AP_3D"] == 0.0
    assert result["classes"]["Pedestrian"]["AP_BEV_loose"] == 0.0
    assert result["classes"]["Cyclist"]["AP_3D"] is None
    assert result["mAP_3D"] == 0.0
    # Perfect Car, no Pedestrian prediction, no Cyclist gt: mAP = (1 + 0) / 2.
    result = _one_frame([car(10.0), ped(5.0)], [CAR, PED], [car(10.0)], [CAR], [0.5])
    assert result["mAP_BEV"] == pytest.approx(0.5) and result["mAP_3D"] == pytest.approx(0.5)
    assert evaluate_detections({}, {}, CLASSES)["mAP_3D"] is None


def test_ignored_ground_truth_label():
    # A box of label -1 (not a class) is no ground truth: not counted, and a prediction on it is
    # an ordinary FP of its predicted class.
    result = _one_frame([car(10.0), car(30.0, 10.0)], [CAR, -1], [car(10.0)], [CAR], [0.9])
    assert result["classes"]["Car"]["num_gt"] == 1
    _assert_all_one(result["classes"]["Car"])
    result = _one_frame(
        [car(10.0), car(30.0, 10.0)], [CAR, -1], [car(10.0), car(30.0, 10.0)], [CAR] * 2, [0.9, 1]
    )
    assert result["classes"]["Car"]["AP_BEV"] == pytest.approx(0.5)


def test_distance_bins():
    # Cars at 10, 40 and 60 m; the 10 and 60 m ones found, a FP at 35 m, 10 m from any car.
    gts = [car(10.0), car(40.0), car(60.0)]
    preds = [car(10.0), car(0.0, 35.0), car(60.0)]
    entry = _one_frame(gts, [CAR] * 3, preds, [CAR] * 3, [0.8, 0.9, 0.7])["classes"]["Car"]
    # Overall: FP 0.9, TP 0.8, TP 0.7 over 3 gts: precision 1/2 at recall 1/3, 2/3 at recall 2/3
    # -> positions 1..26 (<= 2/3) at 2/3 -> AP = 26/40 * 2/3.
    assert entry["num_gt"] == 3
    assert entry["AP_BEV"] == pytest.approx(26 / 40 * 2 / 3)
    bins = entry["by_distance"]
    assert [bins[b]["num_gt"] for b in ("0-30", "30-50", "50+")] == [1, 1, 1]
    # The 35 m FP counts only in 30-50; the other bins see their one car found.
    assert bins["0-30"]["AP_BEV"] == pytest.approx(1.0)
    assert bins["30-50"]["AP_BEV"] == 0.0
    assert bins["50+"]["AP_BEV"] == pytest.approx(1.0)


def test_prediction_across_a_bin_edge():
    # A car at 29.5 m predicted at 30.5 m (IoU 0.6): in 0-30 it finds its car (TP at the loose
    # threshold) although its own distance is in 30-50; in 30-50 it matches an ignored car and
    # is neither TP nor FP (that bin has no ground truth: no AP).
    entry = _one_frame([car(29.5)], [CAR], [car(30.5)], [CAR], [0.9])["classes"]["Car"]
    bins = entry["by_distance"]
    assert bins["0-30"]["AP_BEV_loose"] == pytest.approx(1.0)
    assert bins["0-30"]["AP_BEV"] == 0.0  # below 0.7 it is a miss, and a FP of 30-50 only
    assert bins["30-50"]["num_gt"] == 0 and bins["30-50"]["AP_BEV_loose"] is None
    # With a real car at 40 m in the same frame, the edge box is still no FP of 30-50.
    entry = _one_frame(
        [car(29.5), car(0.0, 40.0)], [CAR] * 2, [car(30.5), car(0.0, 40.0)], [CAR] * 2, [0.9, 0.5]
    )["classes"]["Car"]
    assert entry["by_distance"]["30-50"]["AP_BEV_loose"] == pytest.approx(1.0)
    # At the strict threshold it matches nothing: a FP of its own bin (30-50), ranked first.
    assert entry["by_distance"]["30-50"]["AP_BEV"] == pytest.approx(0.5)


def test_bin_prefers_its_own_ground_truth():
    # Cars at 28.5 and 31.5 m, both inside one 7 m prediction at 30 m: BEV IoU 8 / 14 = 0.57
    # with either (>= 0.5, the loose threshold). In each bin the prediction takes that bin's car,
    # not the ignored one across the edge.
    long_box = [30.0, 0.0, 0.0, 7.0, 2.0, 1.5, 0.0]
    entry = _one_frame([car(28.5), car(31.5)], [CAR] * 2, [long_box], [CAR], [0.9])
    bins = entry["classes"]["Car"]["by_distance"]
    assert bins["0-30"]["AP_BEV_loose"] == pytest.approx(1.0)
    assert bins["30-50"]["AP_BEV_loose"] == pytest.approx(1.0)
    # Overall only one of the two cars is found: recall 1/2 at precision 1 -> AP 1/2.
    assert entry["classes"]["Car"]["AP_BEV_loose"] == pytest.approx(0.5)


def test_bad_predicted_label_is_an_error():
    with pytest.raises(ValueError, match=r"predicted labels \[3\]"):
        _one_frame([car(10.0)], [CAR], [car(10.0)], [3], [0.9])
