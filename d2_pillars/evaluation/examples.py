"""BEV images of the worst and best samples of an evaluation, saved next to its metrics.

The evaluators keep, for every sample, the predictions in the keyframe LiDAR frame whose score
reaches the drawing threshold (boxes, labels and scores only: no points). After scoring, the
main rank ranks the samples by a per-sample F1 (same-class predictions matched one-to-one to the
labelled ground truth of the registered dataset's record by BEV centre distance,
:func:`d2_pillars.visualization.match_by_center_distance`), reads the point clouds of the chosen
samples only, and renders them with :func:`d2_pillars.visualization.save_bev_examples`.
"""

import glob
import logging
import numpy as np
import os
from typing import Dict, List, Sequence

from detectron2.data import DatasetCatalog, MetadataCatalog

from d2_pillars.data.display import ego_yaw_in_lidar, ground_truth_of, load_display_points
from d2_pillars.visualization import match_by_center_distance, save_bev_examples

__all__ = [
    "VIS_SUBDIR",
    "lidar_frame_predictions",
    "merge_sample_entries",
    "select_examples",
    "save_evaluation_examples",
]

logger = logging.getLogger(__name__)

#: Sub-folder of the evaluator's ``output_dir`` that receives the images.
VIS_SUBDIR = "vis"
#: File name prefix of the images (stale ones are removed before a new evaluation writes its own).
VIS_PREFIX = "bev"
#: Bird's-eye range (x_min, y_min, x_max, y_max) in meters shown by default.
DEFAULT_BEV_RANGE = (-50.0, -50.0, 50.0, 50.0)


def lidar_frame_predictions(instances, score_thresh: float) -> Dict[str, np.ndarray]:
    """One sample's predictions with ``score >= score_thresh``, kept for drawing.

    Args:
        instances: ``Instances`` on the CPU with ``pred_boxes3d: LiDARBoxes`` (N, 7|9) in the
            keyframe LiDAR frame, ``scores`` (N,), ``pred_classes`` (N,).

    Returns:
        ``{"boxes": (K, 7|9) float32, "labels": (K,) int64, "scores": (K,) float32}``.
    """
    scores = instances.scores.detach().cpu().numpy().astype(np.float32).reshape(-1)
    boxes = instances.pred_boxes3d.tensor.detach().cpu().numpy().astype(np.float32)
    labels = instances.pred_classes.detach().cpu().numpy().astype(np.int64).reshape(-1)
    keep = scores >= score_thresh
    width = boxes.shape[1] if boxes.ndim == 2 else 7
    return {
        "boxes": np.ascontiguousarray(boxes.reshape(-1, width)[keep]),
        "labels": labels[keep],
        "scores": scores[keep],
    }


def merge_sample_entries(per_rank: Sequence[Sequence[tuple]]) -> Dict[str, dict]:
    """``{token: entry}`` from one list of ``(token, entry)`` per rank; the first entry of a
    token seen twice (a padded sampler) is kept."""
    merged: Dict[str, dict] = {}
    for entries in per_rank:
        for token, entry in entries:
            merged.setdefault(token, entry)
    return merged


def select_examples(sample_scores: Sequence[float], num: int) -> List[int]:
    """Indices of the ``num`` worst and ``num`` best samples (higher score is better), each once,
    in ascending score order (ties in input order): the same choice as ``save_bev_examples``
    with ``num_worst = num_best = num``."""
    scores = np.asarray(sample_scores, dtype=np.float64).reshape(-1)
    order = np.argsort(scores, kind="stable")
    chosen = set(order[:num].tolist()) | set(order[::-1][:num].tolist())
    return [int(i) for i in order if int(i) in chosen]


def _circular_mean(angles: Sequence[float]) -> float:
    angles = np.asarray(angles, dtype=np.float64)
    return float(np.arctan2(np.sin(angles).mean(), np.cos(angles).mean())) if angles.size else 0.0


def _remove_stale_images(out_dir: str, prefix: str) -> None:
    for path in glob.glob(os.path.join(glob.escape(out_dir), f"{prefix}_*.png")):
        try:
            os.remove(path)
        except OSError as e:
            logger.warning(f"Could not remove the old example image {path}: {e}")


def save_evaluation_examples(
    dataset_name: str,
    predictions: Dict[str, dict],
    out_dir: str,
    class_names: Sequence[str],
    *,
    num_samples: int,
    score_thresh: float = 0.3,
    dist_thresh: float = 2.0,
    num_sweeps: int = 10,
    **render_kwargs,
) -> List[dict]:
    """Render the ``num_samples`` worst and best samples of an evaluation into ``out_dir``.

    Args:
        dataset_name: the registered split; its records (``DatasetCatalog``) give the ground
            truth (``gt_boxes`` with ``gt_labels >= 0``), the LiDAR files and ``lidar2ego``.
        predictions: ``{sample_token: {"boxes", "labels", "scores"}}`` in the keyframe LiDAR
            frame (:func:`lidar_frame_predictions`); only these samples are ranked.
        out_dir: folder of the PNGs (created; older ``bev_*.png`` there are removed).
        class_names: label -> name.
        num_samples: how many worst and how many best samples (each drawn once).
        score_thresh: predictions below it are neither counted nor drawn.
        dist_thresh: BEV centre distance (m) below which a prediction matches a ground truth box.
        num_sweeps: sweeps merged into the displayed point cloud (as ``tools/visualize.py``).
        render_kwargs: for :func:`d2_pillars.visualization.render_bev` (``size``, ``bev_range``,
            ``color_by``, ...).

    Returns:
        list of ``{"path", "sample_token", "rank": "worst"|"best", "score"}`` (worst first).
    """
    if num_samples <= 0 or not predictions:
        return []
    records = [d for d in DatasetCatalog.get(dataset_name) if d["sample_token"] in predictions]
    missing = len(predictions) - len({d["sample_token"] for d in records})
    if missing:
        logger.warning(
            f"{missing} predicted samples are not in dataset '{dataset_name}'; not drawn"
        )
    if not records:
        return []
    ground_truth = [ground_truth_of(d) for d in records]
    sample_scores = [
        match_by_center_distance(
            boxes, labels, pred["boxes"], pred["labels"], pred["scores"], score_thresh, dist_thresh
        )["f1"]
        for (boxes, labels), pred in zip(
            ground_truth, (predictions[d["sample_token"]] for d in records)
        )
    ]
    chosen = select_examples(sample_scores, num_samples)

    bev_range = tuple(render_kwargs.get("bev_range", DEFAULT_BEV_RANGE))
    render_kwargs.setdefault("bev_range", bev_range)
    load_dim = int(MetadataCatalog.get(dataset_name).get("point_load_dim", 5))
    samples, preds = [], []
    for i in chosen:
        record = records[i]
        gt_boxes, gt_labels = ground_truth[i]
        points = load_display_points(
            record, load_dim=load_dim, num_sweeps=num_sweeps, bev_range=bev_range
        )
        samples.append(
            {
                "sample_token": record["sample_token"],
                "points": points,
                "gt_boxes": gt_boxes,
                "gt_labels": gt_labels,
            }
        )
        preds.append(predictions[record["sample_token"]])
    # One ego marker for all images: every sample of a split shares (nearly) one LiDAR mounting.
    render_kwargs.setdefault(
        "ego_yaw", _circular_mean([ego_yaw_in_lidar(records[i].get("lidar2ego")) for i in chosen])
    )
    render_kwargs.setdefault("point_features", ("x", "y", "z", "time_lag"))

    os.makedirs(out_dir, exist_ok=True)
    _remove_stale_images(out_dir, VIS_PREFIX)
    return save_bev_examples(
        samples,
        preds,
        out_dir,
        class_names,
        num_best=num_samples,
        num_worst=num_samples,
        sample_scores=[sample_scores[i] for i in chosen],
        score_thresh=score_thresh,
        dist_thresh=dist_thresh,
        prefix=VIS_PREFIX,
        **render_kwargs,
    )
