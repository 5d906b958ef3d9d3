"""A dataset record's ground truth, ego heading and points as arrays, for display (the viewer,
evaluation example images). Reads the record and its LiDAR files; draws nothing."""

import numpy as np
from typing import Optional, Sequence
import torch

from d2_pillars.structures import LiDARBoxes

from .points import load_points

__all__ = ["DISPLAY_FEATURES", "ground_truth_of", "ego_yaw_in_lidar", "load_display_points"]

#: Columns loaded for display when no model decides them (time_lag allows --color-by time_lag).
DISPLAY_FEATURES = ("x", "y", "z", "time_lag")


def ground_truth_of(dataset_dict: dict, include_ignored: bool = False):
    """``(LiDARBoxes, labels (K,) int64)`` of a dataset dict; unmapped boxes (label -1) are
    dropped unless ``include_ignored``. (None, None) when the dict has no annotations."""
    if "gt_boxes" not in dataset_dict:
        return None, None
    boxes = np.asarray(dataset_dict["gt_boxes"], dtype=np.float32)
    labels = np.asarray(dataset_dict["gt_labels"], dtype=np.int64).reshape(-1)
    if boxes.shape[0] != labels.shape[0]:
        raise ValueError(
            f"sample {dataset_dict.get('sample_token')}: {boxes.shape[0]} gt_boxes but "
            f"{labels.shape[0]} gt_labels; rebuild the info file (tools/create_data.py)"
        )
    if not include_ignored:
        keep = labels >= 0
        boxes, labels = boxes[keep], labels[keep]
    width = boxes.shape[1] if boxes.ndim == 2 and boxes.shape[0] else 7
    return LiDARBoxes(torch.from_numpy(np.ascontiguousarray(boxes.reshape(-1, width)))), labels


def ego_yaw_in_lidar(lidar2ego) -> float:
    """Heading of the vehicle's +x axis in the LiDAR frame (radians); 0 without a transform."""
    if lidar2ego is None:
        return 0.0
    rot = np.asarray(lidar2ego, dtype=np.float64)[:3, :3]
    forward = rot.T @ np.array([1.0, 0.0, 0.0])  # ego +x expressed in LiDAR coordinates
    return float(np.arctan2(forward[1], forward[0]))


def load_display_points(
    dataset_dict: dict,
    *,
    load_dim: int = 5,
    num_sweeps: int = 10,
    point_features: Sequence[str] = DISPLAY_FEATURES,
    bev_range: Optional[Sequence[float]] = None,
) -> np.ndarray:
    """Keyframe + ``num_sweeps`` sweeps in the keyframe LiDAR frame (``data.points.load_points``),
    optionally cropped to the BEV range ``(x_min, y_min, x_max, y_max)``."""
    points = load_points(
        dataset_dict, point_features=point_features, load_dim=load_dim, num_sweeps=num_sweeps
    )
    if bev_range is not None:
        x0, y0, x1, y1 = bev_range
        keep = (points[:, 0] >= x0) & (points[:, 0] <= x1) & (points[:, 1] >= y0)
        keep &= points[:, 1] <= y1
        points = points[keep]
    return points
