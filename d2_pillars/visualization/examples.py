"""The worst and best samples of an evaluation as BEV images: a per-sample F1 from matching
predictions to ground truth by centre distance, and the images of both ends, saved as PNGs."""

import logging
import numpy as np
import os
from typing import Optional, Sequence

from .bev import render_bev, save_png
from .inputs import as_numpy, box_labels, box_scores, to_boxes

__all__ = ["match_by_center_distance", "save_bev_examples"]

logger = logging.getLogger(__name__)


def match_by_center_distance(
    gt_boxes,
    gt_labels,
    pred_boxes,
    pred_labels,
    pred_scores,
    score_thresh: float = 0.3,
    dist_thresh: float = 2.0,
):
    """Per-sample detection quality: one-to-one matching of same-class predictions (score >=
    ``score_thresh``) to ground truth by BEV centre distance < ``dist_thresh`` meters (the
    nuScenes matching criterion), solved optimally (Hungarian, maximum number of matches).

    Returns a dict with ``tp``, ``fp``, ``fn`` (ints) and ``f1`` (float in [0, 1]; 1.0 for a sample
    with neither ground truth nor predictions).
    """
    from scipy.optimize import linear_sum_assignment

    gt, pred = to_boxes(gt_boxes), to_boxes(pred_boxes)
    gl, pl = box_labels(gt_labels, len(gt)), box_labels(pred_labels, len(pred))
    ps = box_scores(pred_scores, len(pred))
    keep = ps >= score_thresh
    gt_xy = as_numpy(gt.center)[gl >= 0, :2].astype(np.float64)
    gl = gl[gl >= 0]
    pred_xy = as_numpy(pred.center)[keep, :2].astype(np.float64)
    pl = pl[keep]
    tp = 0
    if len(gt_xy) and len(pred_xy):
        dist = np.linalg.norm(pred_xy[:, None] - gt_xy[None], axis=-1)
        ok = (dist < dist_thresh) & (pl[:, None] == gl[None])
        rows, cols = linear_sum_assignment(~ok)  # zero cost for admissible pairs
        tp = int(ok[rows, cols].sum())
    fp, fn = len(pred_xy) - tp, len(gt_xy) - tp
    denom = 2 * tp + fp + fn
    return {"tp": tp, "fp": fp, "fn": fn, "f1": 1.0 if denom == 0 else 2 * tp / denom}


def save_bev_examples(
    samples: Sequence[dict],
    predictions: Sequence[dict],
    out_dir: str,
    class_names: Sequence[str],
    *,
    num_best: int = 2,
    num_worst: int = 2,
    sample_scores: Optional[Sequence[float]] = None,
    score_thresh: float = 0.3,
    dist_thresh: float = 2.0,
    prefix: str = "bev",
    **render_kwargs,
):
    """Save BEV images of the worst and best samples of an evaluation next to its metrics.

    Args:
        samples: one dict per sample with ``points`` ((N, C) array/tensor, LiDAR frame),
            ``gt_boxes`` (``LiDARBoxes`` or (K, 7|9) array), ``gt_labels`` ((K,) ints, negative =
            ignored), and optionally ``sample_token`` (used in file names and titles).
        predictions: one dict per sample (same order) with ``boxes`` (``LiDARBoxes`` / array),
            ``labels`` and ``scores``; detectron2 outputs ``{"instances": Instances(pred_boxes3d,
            pred_classes, scores)}`` are accepted too.
        out_dir: folder for the PNGs (created).
        class_names: label -> name.
        num_best / num_worst: how many images of each end.
        sample_scores: quality of each sample, higher is better; default: the F1 score of
            :func:`match_by_center_distance` at ``score_thresh`` / ``dist_thresh``.
        render_kwargs: passed to :func:`render_bev` (``size``, ``bev_range``, ``color_by``, ...).

    Returns:
        list of dicts ``{"path", "sample_token", "rank": "best"|"worst", "score"}``, worst first.
    """
    if len(samples) != len(predictions):
        raise ValueError(f"{len(samples)} samples but {len(predictions)} predictions")
    preds = [_normalize_prediction(p) for p in predictions]
    if sample_scores is None:
        sample_scores = [
            match_by_center_distance(
                s.get("gt_boxes"), s.get("gt_labels"), p["boxes"], p["labels"], p["scores"],
                score_thresh, dist_thresh,
            )["f1"]
            for s, p in zip(samples, preds)
        ]  # fmt: skip
    sample_scores = np.asarray(sample_scores, dtype=np.float64)
    if sample_scores.shape != (len(samples),):
        raise ValueError(f"sample_scores must have one value per sample ({len(samples)})")
    order = np.argsort(sample_scores, kind="stable")  # worst first
    worst = list(order[: min(num_worst, len(order))])
    best = [i for i in order[::-1][: min(num_best, len(order))] if i not in worst]
    written = []
    for rank, indices in (("worst", worst), ("best", best)):
        for k, i in enumerate(indices):
            s, p = samples[i], preds[i]
            token = str(s.get("sample_token", i))
            title = f"{rank} #{k + 1}: {token[:16]}  (F1/score {sample_scores[i]:.2f})"
            image = render_bev(
                s.get("points"), s.get("gt_boxes"), s.get("gt_labels"), p["boxes"], p["labels"],
                p["scores"], class_names=class_names, score_thresh=score_thresh, title=title,
                **render_kwargs,
            )  # fmt: skip
            path = os.path.join(out_dir, f"{prefix}_{rank}{k + 1}_{_safe_name(token)}.png")
            save_png(path, image)
            written.append(
                {
                    "path": path,
                    "sample_token": token,
                    "rank": rank,
                    "score": float(sample_scores[i]),
                }
            )
    logger.info("Saved %d BEV example images to %s", len(written), out_dir)
    return written


def _safe_name(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in text)[:64]


def _normalize_prediction(pred) -> dict:
    """{"boxes", "labels", "scores"} from our dict form or a detectron2 model output."""
    if pred is None:
        return {"boxes": None, "labels": None, "scores": None}
    if isinstance(pred, dict) and "instances" in pred:
        pred = pred["instances"]
    if hasattr(pred, "pred_boxes3d"):
        inst = pred.to("cpu") if hasattr(pred, "to") else pred
        return {"boxes": inst.pred_boxes3d, "labels": inst.pred_classes, "scores": inst.scores}
    if isinstance(pred, dict) and "boxes" in pred:
        return {"boxes": pred["boxes"], "labels": pred.get("labels"), "scores": pred.get("scores")}
    raise TypeError(
        "a prediction must be {'boxes', 'labels', 'scores'} or a model output "
        f"{{'instances': Instances(pred_boxes3d, pred_classes, scores)}}; got {type(pred)}"
    )
