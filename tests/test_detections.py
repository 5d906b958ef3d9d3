"""tests/detections.py: near ties are interchangeable, real differences still fail."""

import numpy as np
import pytest
import torch

from detectron2.structures import Instances

from d2_pillars.structures import LiDARBoxes

from detections import assert_same_detections


def _instances(boxes, scores, labels):
    inst = Instances((100, 100))
    inst.pred_boxes3d = LiDARBoxes(
        torch.as_tensor(np.asarray(boxes), dtype=torch.float32).reshape(-1, 7)
    )
    inst.scores = torch.as_tensor(np.asarray(scores), dtype=torch.float32)
    inst.pred_classes = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
    return inst


# Five separated cars (10 m apart) and one pedestrian, scores well apart.
BOXES = [[10.0 * k, 0.0, -1.0, 4.0, 1.8, 1.6, 0.1 * k] for k in range(5)] + [
    [0.0, 20.0, -1.0, 0.7, 0.7, 1.7, 0.0]
]
SCORES = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4]
LABELS = [0, 0, 0, 0, 0, 8]


def _base():
    return _instances(BOXES, SCORES, LABELS)


def test_order_and_rounding_do_not_matter():
    order = [3, 0, 5, 1, 4, 2]
    scores = np.array(SCORES)[order] + 1e-7  # an ulp-sized difference
    b = _instances(np.array(BOXES)[order] + 2e-6, scores, np.array(LABELS)[order])
    assert_same_detections(_base(), b, nms_thresh=0.2)


@pytest.mark.parametrize(
    "change",
    ["label", "shifted centre", "missing box", "score", "yaw"],
)
def test_a_real_difference_fails(change):
    boxes, scores, labels = np.array(BOXES), np.array(SCORES), np.array(LABELS)
    if change == "label":
        labels = labels.copy()
        labels[2] = 1
    elif change == "shifted centre":
        boxes = boxes.copy()
        boxes[1, 0] += 0.3
    elif change == "missing box":
        boxes, scores, labels = boxes[1:], scores[1:], labels[1:]
    elif change == "score":
        scores = scores.copy()
        scores[4] += 1e-3
    elif change == "yaw":
        boxes = boxes.copy()
        boxes[3, 6] += np.pi  # a flipped heading
    b = _instances(boxes, scores, labels)
    # even with both candidate pools given: the changed box is in neither
    with pytest.raises(AssertionError):
        assert_same_detections(
            _base(),
            b,
            nms_thresh=0.2,
            candidates_a=_base(),
            candidates_b=_base(),
            max_unmatched_fraction=0.5,
        )


def _tie_pool():
    """Two overlapping near-tied boxes P and Q (0.3 m apart, BEV IoU ~0.85) plus the base set."""
    q = [0.3, 0.0, -1.0, 4.0, 1.8, 1.6, 0.0]
    return _instances(BOXES + [q], SCORES[:-1] + [0.4, 0.9 + 1e-7], LABELS + [0])


def test_an_nms_near_tie_pick_is_interchangeable():
    pool = _tie_pool()
    keep_p = _base()  # P (box 0, score 0.9) kept, Q suppressed
    # the other back-end rounds Q above P: Q kept, P suppressed
    idx = [6, 1, 2, 3, 4, 5]
    keep_q = _instances(pool.pred_boxes3d.tensor[idx], pool.scores[idx], pool.pred_classes[idx])
    kwargs = dict(nms_thresh=0.2, max_unmatched_fraction=0.2)
    assert_same_detections(keep_p, keep_q, candidates_a=pool, candidates_b=pool, **kwargs)
    assert_same_detections(
        keep_p, keep_q, candidates_a=lambda: pool, candidates_b=lambda: pool, **kwargs
    )
    # without the pools the swap is not accepted: it could be a shifted box
    with pytest.raises(AssertionError, match="neither matches nor explains"):
        assert_same_detections(keep_p, keep_q, **kwargs)
    # nor when the scores are not a near tie
    far_scores = keep_q.scores - 1e-3 * (keep_q.scores > 0.85)
    far = _instances(keep_q.pred_boxes3d.tensor, far_scores, keep_q.pred_classes)
    with pytest.raises(AssertionError):
        assert_same_detections(keep_p, far, candidates_a=pool, candidates_b=pool, **kwargs)


def test_a_near_tie_at_the_detection_limit_is_interchangeable():
    boxes = BOXES[:4] + [[50.0, 0.0, -1.0, 4.0, 1.8, 1.6, 0.0]]
    a = _instances(boxes[:3] + [boxes[3]], SCORES[:3] + [0.6], [0] * 4)
    b = _instances(boxes[:3] + [boxes[4]], SCORES[:3] + [0.6 + 2e-7], [0] * 4)
    kwargs = dict(nms_thresh=0.2, max_unmatched_fraction=0.25)
    assert_same_detections(a, b, max_detections=4, **kwargs)
    with pytest.raises(AssertionError):  # no limit: a genuinely different box
        assert_same_detections(a, b, max_detections=0, **kwargs)
    c = _instances(boxes[:3] + [boxes[4]], SCORES[:3] + [0.59], [0] * 4)
    with pytest.raises(AssertionError):  # at the limit, but not a tie
        assert_same_detections(a, c, max_detections=4, **kwargs)


def test_many_unmatched_boxes_are_never_ties():
    pool = _tie_pool()
    idx = [6, 1, 2, 3, 4, 5]
    keep_q = _instances(pool.pred_boxes3d.tensor[idx], pool.scores[idx], pool.pred_classes[idx])
    with pytest.raises(AssertionError, match="no counterpart"):
        assert_same_detections(_base(), keep_q, nms_thresh=0.2, candidates_a=pool)
