"""PointCloudMapper: a dataset dict (one keyframe record) -> a model input (voxels + ground truth).

Pipeline (the reference's train and test pipelines; steps 2 and 3 commute):

1. draw the global augmentation (training only): rotation, scaling, translation, flips;
2. ground truth: drop unmapped classes (label -1), in training boxes with fewer than
   ``INPUT.MIN_GT_LIDAR_POINTS`` LiDAR points, apply the augmentation (velocities too), keep boxes
   whose BEV centre lies inside the range, wrap yaw; in training a sample without boxes is
   skipped (``DATALOADER.FILTER_EMPTY_ANNOTATIONS``);
3. load the keyframe and up to ``INPUT.NUM_SWEEPS`` sweeps into the keyframe LiDAR frame, pick
   the ``INPUT.POINT_FEATURES`` columns, apply the augmentation (folded into the sweep
   transforms: each point is transformed once), drop NaN/inf points (``points.load_points``);
4. keep points strictly inside ``INPUT.POINT_CLOUD_RANGE``, shuffle them (training), voxelize.

Runs in data-loader workers on the CPU; every step is vectorised.
"""

import numpy as np
import torch

from detectron2.config import configurable

from d2_pillars.structures import LiDARBoxes

import logging
import os
from typing import Optional, Sequence

from .points import feature_columns, load_points
from .transforms import RandomGlobalTransform3D

__all__ = ["PointCloudMapper"]

logger = logging.getLogger(__name__)


class PointCloudMapper:
    """Callable mapping a dataset dict to the model input dict of ``docs/internals.md``:

    ``sample_token``, ``timestamp``, ``lidar2ego``, ``ego2global``, ``voxels`` (V, M, C) float32,
    ``voxel_coords`` (V, 3) int32 (z, y, x), ``voxel_num_points`` (V,) int32, and when the dict
    has annotations ``gt_boxes3d`` (LiDARBoxes) and ``gt_classes`` (K,) int64; ``points`` (N, C)
    float32 with ``keep_points``. Returns None in training when no ground truth is left and
    ``filter_empty_gt`` is set (detectron2's ``MapDataset`` then draws another sample).
    """

    @configurable
    def __init__(
        self,
        *,
        is_train: bool,
        voxelizer,
        point_cloud_range: Sequence[float],
        point_features: Sequence[str] = ("x", "y", "z", "time_lag"),
        load_dim: int = 5,
        num_sweeps: int = 10,
        random_sweeps: bool = True,
        remove_close_radius: float = 0.0,
        augmentation: Optional[RandomGlobalTransform3D] = None,
        shuffle_points: bool = True,
        min_gt_lidar_points: int = 0,
        filter_empty_gt: bool = False,
        keep_points: bool = False,
    ):
        """
        Args:
            is_train: training mode (augmentation, random sweeps, shuffling, GT point filter).
            voxelizer: ``d2_pillars.layers.Voxelizer``-like callable (N, C) -> (voxels, coords,
                num_points).
            point_cloud_range: [x_min, y_min, z_min, x_max, y_max, z_max] (m).
            point_features: output columns (x, y, z first; see ``points.py``).
            load_dim: float32 values per point in the LiDAR files.
            num_sweeps: previous sweeps merged per keyframe.
            random_sweeps: in training, pick sweeps at random when the record has more.
            remove_close_radius: drop sweep points with |x| < r and |y| < r (0: off).
            augmentation: drawn per sample in training; ignored at test.
            shuffle_points: shuffle points before voxelization in training.
            min_gt_lidar_points: training GT needs ``num_lidar_pts >= this`` (0: no filter;
                boxes with an unknown, negative count are kept).
            filter_empty_gt: in training, return None when no GT box is left.
            keep_points: also output the filtered (and shuffled) point cloud.
        """
        self.is_train = is_train
        self.voxelizer = voxelizer
        self.point_cloud_range = np.asarray(point_cloud_range, dtype=np.float32).reshape(6)
        self.point_features = tuple(point_features)
        self.load_dim = int(load_dim)
        feature_columns(self.point_features, self.load_dim)  # validate early
        self.num_sweeps = int(num_sweeps)
        self.random_sweeps = bool(random_sweeps)
        self.remove_close_radius = float(remove_close_radius)
        self.augmentation = augmentation if is_train else None
        self.shuffle_points = bool(shuffle_points) and is_train
        self.min_gt_lidar_points = int(min_gt_lidar_points)
        self.filter_empty_gt = bool(filter_empty_gt) and is_train
        self.keep_points = bool(keep_points)
        self._rng_pid = None
        self._generator = None
        self._torch_generator = None
        mode = "training" if is_train else "inference"
        logger.info(f"[PointCloudMapper] in {mode}: augmentation {self.augmentation}")

    @classmethod
    def from_config(cls, cfg, is_train: bool = True):
        from d2_pillars.layers import Voxelizer

        features = list(cfg.INPUT.POINT_FEATURES)
        voxelizer = Voxelizer(cfg, is_train=is_train)
        return {
            "is_train": is_train,
            "voxelizer": voxelizer,
            "point_cloud_range": list(cfg.INPUT.POINT_CLOUD_RANGE),
            "point_features": features,
            "load_dim": cfg.INPUT.LOAD_DIM,
            "num_sweeps": cfg.INPUT.NUM_SWEEPS,
            "random_sweeps": cfg.INPUT.RANDOM_SWEEPS_TRAIN,
            "remove_close_radius": cfg.INPUT.REMOVE_CLOSE_RADIUS,
            "augmentation": RandomGlobalTransform3D.from_config(cfg) if is_train else None,
            "shuffle_points": cfg.INPUT.SHUFFLE_POINTS,
            "min_gt_lidar_points": cfg.INPUT.MIN_GT_LIDAR_POINTS,
            "filter_empty_gt": cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS,
            "keep_points": cfg.INPUT.KEEP_POINTS,
        }

    def __getstate__(self):
        # Random generators are per process (re-created in each worker from its seed).
        state = self.__dict__.copy()
        state.update(_rng_pid=None, _generator=None, _torch_generator=None)
        return state

    def _rng(self) -> np.random.Generator:
        # One generator per process, seeded from numpy's global RNG, which detectron2 seeds
        # differently in every data-loader worker (``worker_init_reset_seed``).
        pid = os.getpid()
        if self._rng_pid != pid:
            self._generator = np.random.default_rng(np.random.randint(2**31))
            self._torch_generator = torch.Generator().manual_seed(
                int(self._generator.integers(2**62))
            )
            self._rng_pid = pid
        return self._generator

    def _ground_truth(self, dataset_dict, transform):
        boxes = np.asarray(dataset_dict["gt_boxes"], dtype=np.float32)
        labels = np.asarray(dataset_dict["gt_labels"], dtype=np.int64)
        keep = labels >= 0
        if self.is_train and self.min_gt_lidar_points > 0:
            # A negative count means unknown (-1 everywhere in the Lyft release): keep those.
            num = np.asarray(dataset_dict["num_lidar_pts"])
            keep &= (num < 0) | (num >= self.min_gt_lidar_points)
        boxes = LiDARBoxes(torch.from_numpy(np.ascontiguousarray(boxes[keep])))
        labels = torch.from_numpy(labels[keep])
        if transform is not None:
            transform.apply_boxes(boxes)
        inside = boxes.in_range_bev(self.point_cloud_range.tolist())
        boxes = boxes[inside].wrap_yaw()
        return boxes, labels[inside]

    def _range_filter_and_shuffle(self, points, rng):
        r = self.point_cloud_range
        # Column by column: comparisons broadcast over a 3-wide axis are ~10x slower.
        mask = points[:, 0] > r[0]
        for axis in range(3):
            col = points[:, axis]
            if axis:
                mask &= col > r[axis]
            mask &= col < r[axis + 3]
        if self.shuffle_points:
            idx = np.flatnonzero(mask)
            # torch's randperm is ~2x faster than numpy's shuffle; np.take ~20x faster than
            # points[idx] on (N, C) float32.
            perm = torch.randperm(idx.size, generator=self._torch_generator).numpy()
            return np.take(points, np.take(idx, perm), axis=0)
        return points if mask.all() else points[mask]

    def __call__(self, dataset_dict: dict) -> Optional[dict]:
        rng = self._rng()
        transform = self.augmentation(rng) if self.augmentation is not None else None
        out = {
            "sample_token": dataset_dict["sample_token"],
            "timestamp": dataset_dict["timestamp"],
            "lidar2ego": dataset_dict["lidar2ego"],
            "ego2global": dataset_dict["ego2global"],
        }
        if "gt_boxes" in dataset_dict:
            boxes, classes = self._ground_truth(dataset_dict, transform)
            if self.filter_empty_gt and len(boxes) == 0:
                return None  # before reading any file
            out["gt_boxes3d"] = boxes
            out["gt_classes"] = classes

        points = load_points(
            dataset_dict,
            point_features=self.point_features,
            load_dim=self.load_dim,
            num_sweeps=self.num_sweeps,
            sweep_rng=rng if (self.is_train and self.random_sweeps) else None,
            remove_close_radius=self.remove_close_radius,
            linear=None if transform is None else transform.linear,
            offset=None if transform is None else transform.offset,
        )
        points = self._range_filter_and_shuffle(points, rng)
        points_t = torch.from_numpy(points)
        voxels, coords, num_points = self.voxelizer(points_t)
        out["voxels"] = voxels
        out["voxel_coords"] = coords
        out["voxel_num_points"] = num_points
        if self.keep_points:
            out["points"] = points_t
        return out
