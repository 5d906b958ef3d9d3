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

Before any of this the dict is checked (:func:`check_record`): a malformed record (a missing
key, a transform that is not a finite rigid 4x4 matrix, ground-truth arrays of different lengths,
a box that is not finite or has a size <= 0, a label other than -1 or ``0..NUM_CLASSES-1``) raises
:class:`SampleRecordError` naming the sample and its LiDAR file. Records written by
``tools/create_data.py`` pass (info building drops invalid boxes with a warning); a failing one
comes from a damaged or hand-made info file.

Runs in data-loader workers on the CPU; every step is vectorised.
"""

import logging
import numbers
import numpy as np
import os
from typing import Optional, Sequence, Tuple
import torch

from detectron2.config import configurable

from d2_pillars.structures import LiDARBoxes

from .points import feature_columns, load_points
from .transforms import RandomGlobalTransform3D

__all__ = ["PointCloudMapper", "SampleRecordError", "check_record"]

logger = logging.getLogger(__name__)

_REQUIRED_KEYS = ("sample_token", "timestamp", "lidar_path", "lidar2ego", "ego2global")
# Largest absolute box value accepted (m, rad, m/s): anything beyond is a unit or frame error.
_MAX_BOX_VALUE = 1e6
# Tolerance on R @ R.T == I and on the last row of a rigid transform.
_RIGID_TOL = 1e-3


class SampleRecordError(ValueError):
    """A dataset dict (one info record) is malformed; the message names the sample token, its
    LiDAR file and what is wrong. Raised by :func:`check_record` (and so by
    :class:`PointCloudMapper`); problems with the LiDAR files themselves raise
    :class:`~d2_pillars.data.points.PointFileError`."""


def _record_error(record, problem: str) -> SampleRecordError:
    token = record.get("sample_token", "<no sample_token>")
    path = record.get("lidar_path", "<no lidar_path>")
    return SampleRecordError(
        f"Sample {token!r} (LiDAR file {path}): {problem}. Info records written by "
        "tools/create_data.py never look like this: the info file is damaged or was not built by "
        "d2_pillars; rebuild it with `python tools/create_data.py <nuscenes|lyft> --root "
        "DATASET_ROOT --version VERSION`."
    )


def _check_rigid(record, values, names) -> None:
    """Each of ``values`` must be a finite rigid 4x4 transform (checked together)."""
    mats = []
    for value, what in zip(values, names):  # at most a few tens of sweeps
        try:
            m = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError) as e:
            raise _record_error(record, f"{what} is not a numeric 4x4 matrix ({e})") from None
        if m.shape != (4, 4):
            raise _record_error(record, f"{what} must be a 4x4 matrix, got shape {m.shape}")
        mats.append(m)
    m = np.stack(mats)  # (S, 4, 4)
    finite = np.isfinite(m).all(axis=(1, 2))
    if not finite.all():
        raise _record_error(record, f"{names[int(np.argmin(finite))]} holds NaN or inf values")
    rot = m[:, :3, :3]
    rigid = (np.abs(m[:, 3] - (0.0, 0.0, 0.0, 1.0)).max(axis=1) <= _RIGID_TOL) & (
        np.abs(rot @ rot.transpose(0, 2, 1) - np.eye(3)).max(axis=(1, 2)) <= _RIGID_TOL
    )
    rigid &= np.linalg.det(rot) > 0
    if not rigid.all():
        what = names[int(np.argmin(rigid))]
        raise _record_error(record, f"{what} is not a rigid transform (rotation + translation)")


def _finite_number(record, value, what: str) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise _record_error(record, f"{what} must be a number, got {type(value).__name__}")
    if not np.isfinite(float(value)):
        raise _record_error(record, f"{what} is {value}")
    return float(value)


def _integer_array(record, value, what: str, length: int) -> np.ndarray:
    a = np.asarray(value)
    if a.size == 0 and length == 0:
        return np.zeros(0, dtype=np.int64)
    if a.dtype.kind not in "iu" or a.shape != (length,):
        raise _record_error(
            record,
            f"'{what}' must be ({length},) integers like 'gt_boxes', got {a.dtype} {a.shape}",
        )
    return a.astype(np.int64)


def _require_boxes(record, ok: np.ndarray, problem: str, shown: np.ndarray) -> None:
    """Raise, naming how many gt_boxes ``problem`` and the first one's row of ``shown`` (K, ...),
    unless every entry of ``ok`` (K,) bool is True."""
    if not ok.all():
        bad = np.flatnonzero(~ok)
        raise _record_error(
            record,
            f"{bad.size} of {ok.size} gt_boxes {problem} (first: index {bad[0]}, "
            f"{shown[bad[0]].tolist()})",
        )


def _ground_truth_arrays(record, num_classes: Optional[int], need_num_points: bool):
    """Checked ``(boxes (K, 7|9) float32, labels (K,) int64, num_lidar_pts (K,) int64 | None)``."""
    try:
        boxes = np.asarray(record["gt_boxes"], dtype=np.float32)
    except (TypeError, ValueError) as e:
        raise _record_error(record, f"'gt_boxes' is not a numeric (K, 7|9) array ({e})") from None
    if boxes.size == 0:
        boxes = boxes.reshape(0, boxes.shape[-1] if boxes.ndim == 2 else 7)
    if boxes.ndim != 2 or boxes.shape[1] not in (7, 9):
        raise _record_error(record, f"'gt_boxes' must be (K, 7) or (K, 9), got {boxes.shape}")
    k = boxes.shape[0]
    if "gt_labels" not in record:
        raise _record_error(record, "it has 'gt_boxes' but no 'gt_labels'")
    labels = _integer_array(record, record["gt_labels"], "gt_labels", k)
    num = None
    if need_num_points:
        if "num_lidar_pts" not in record:
            raise _record_error(record, "it has 'gt_boxes' but no 'num_lidar_pts'")
        num = _integer_array(record, record["num_lidar_pts"], "num_lidar_pts", k)
    if k:
        finite = np.isfinite(boxes).all(axis=1) & (np.abs(boxes).max(axis=1) < _MAX_BOX_VALUE)
        _require_boxes(record, finite, f"hold NaN, inf or values beyond {_MAX_BOX_VALUE:g}", boxes)
        sizes = boxes[:, 3:6]
        _require_boxes(record, (sizes > 0).all(axis=1), "have a size (l, w, h) <= 0", sizes)
        upper = num_classes if num_classes is not None else np.iinfo(np.int64).max
        wrong = (labels < -1) | (labels >= upper)
        if wrong.any():
            allowed = "-1 (unmapped)" + (
                f" or 0..{num_classes - 1}" if num_classes is not None else " or >= 0"
            )
            raise _record_error(
                record,
                f"gt_labels {sorted(set(labels[wrong].tolist()))} are not {allowed} (the "
                "classes of MODEL.ANCHOR3D_HEAD.NUM_CLASSES)",
            )
    return boxes, labels, num


def check_record(
    record: dict, *, num_classes: Optional[int] = None, need_num_points: bool = False
) -> Tuple[Optional[np.ndarray], Optional[np.ndarray], Optional[np.ndarray]]:
    """Check a dataset dict (format in ``docs/internals.md``) before mapping it.

    Checks the keys the mapper and the evaluators read: ``sample_token``, ``timestamp`` (finite),
    ``lidar_path``, ``lidar2ego`` and ``ego2global`` and every sweep's ``sweep2lidar`` (finite
    rigid 4x4), sweep ``lidar_path`` and ``timestamp``; with ``gt_boxes``: ``(K, 7|9)`` finite
    boxes with sizes > 0 and ``|value| < 1e6``, ``gt_labels`` ``(K,)`` integers, each -1
    (unmapped: ignored) or in ``[0, num_classes)``, and with ``need_num_points``
    ``num_lidar_pts`` ``(K,)``. An empty ``gt_boxes`` of any shape with no element is read as
    ``(0, 7)``. The files are not read here (see ``points.load_lidar_file``).

    Returns:
        (boxes, labels, num_lidar_pts): the ground-truth arrays (float32 (K, 7|9), int64 (K,),
        int64 (K,) or None), all None when the record has no ``gt_boxes``.

    Raises:
        SampleRecordError: naming the sample token and its LiDAR file.
    """
    if not isinstance(record, dict):
        raise SampleRecordError(f"A dataset dict must be a dict, got {type(record).__name__}")
    missing = [k for k in _REQUIRED_KEYS if k not in record]
    if missing:
        raise _record_error(record, f"it lacks the keys {missing}")
    if not isinstance(record["lidar_path"], (str, os.PathLike)):
        raise _record_error(record, "'lidar_path' must be a path")
    _finite_number(record, record["timestamp"], "'timestamp'")
    matrices = [record["lidar2ego"], record["ego2global"]]
    names = ["'lidar2ego'", "'ego2global'"]
    sweeps = record.get("sweeps", [])
    if not isinstance(sweeps, (list, tuple)):
        raise _record_error(record, f"'sweeps' must be a list, got {type(sweeps).__name__}")
    for i, sweep in enumerate(sweeps):  # at most a few tens of sweeps
        if not isinstance(sweep, dict):
            raise _record_error(record, f"sweeps[{i}] is a {type(sweep).__name__}, not a dict")
        lacking = [k for k in ("lidar_path", "timestamp", "sweep2lidar") if k not in sweep]
        if lacking:
            raise _record_error(record, f"sweeps[{i}] lacks the keys {lacking}")
        what = f"sweeps[{i}] ({sweep['lidar_path']})"
        if not isinstance(sweep["lidar_path"], (str, os.PathLike)):
            raise _record_error(record, f"{what}: 'lidar_path' must be a path")
        _finite_number(record, sweep["timestamp"], f"{what} 'timestamp'")
        matrices.append(sweep["sweep2lidar"])
        names.append(f"{what} 'sweep2lidar'")
    _check_rigid(record, matrices, names)
    if "gt_boxes" not in record:
        return None, None, None
    return _ground_truth_arrays(record, num_classes, need_num_points)


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
        num_classes: Optional[int] = None,
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
            num_classes: labels must be -1 or below this (None: not checked).
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
        self.num_classes = None if num_classes is None else int(num_classes)
        # The point-count filter (and so ``num_lidar_pts``) is used in training only.
        self._need_num_points = is_train and self.min_gt_lidar_points > 0
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
            "num_classes": cfg.MODEL.ANCHOR3D_HEAD.NUM_CLASSES,
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

    def _ground_truth(self, dataset_dict, transform, arrays=None):
        """Boxes (augmented, in range, yaw wrapped) and labels of the kept ground truth.

        ``arrays``: ``check_record``'s ``(boxes, labels, num_lidar_pts)`` when already checked.
        """
        if arrays is None:
            arrays = _ground_truth_arrays(dataset_dict, self.num_classes, self._need_num_points)
        boxes, labels, num = arrays
        keep = labels >= 0
        if num is not None:
            # A negative count means unknown (-1 everywhere in the Lyft release): keep those.
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
        # Column by column (comparisons broadcast over a 3-wide axis are ~10x slower), in torch
        # on a view of the array (its threads: 2.1 -> 0.9 ms on 346k points); a read-only array
        # (a caller's memory map) stays in numpy, which torch would warn about. Both compare in
        # float32 (numpy < 2 casts the bound to the array's dtype, as torch does).
        cols = torch.from_numpy(points) if points.flags.writeable else points
        mask = cols[:, 0] > r[0]
        for axis in range(3):
            col = cols[:, axis]
            if axis:
                mask &= col > r[axis]
            mask &= col < r[axis + 3]
        mask = mask.numpy() if isinstance(mask, torch.Tensor) else mask
        if self.shuffle_points:
            idx = np.flatnonzero(mask)
            # torch's randperm is ~2x faster than numpy's shuffle; np.take ~20x faster than
            # points[idx] on (N, C) float32.
            perm = torch.randperm(idx.size, generator=self._torch_generator).numpy()
            return np.take(points, np.take(idx, perm), axis=0)
        # np.compress: ~7x faster than boolean indexing points[mask] on (N, C) float32
        return points if mask.all() else np.compress(mask, points, axis=0)

    def __call__(self, dataset_dict: dict) -> Optional[dict]:
        arrays = check_record(
            dataset_dict, num_classes=self.num_classes, need_num_points=self._need_num_points
        )
        rng = self._rng()
        transform = self.augmentation(rng) if self.augmentation is not None else None
        out = {
            "sample_token": dataset_dict["sample_token"],
            "timestamp": dataset_dict["timestamp"],
            "lidar2ego": dataset_dict["lidar2ego"],
            "ego2global": dataset_dict["ego2global"],
        }
        if arrays[0] is not None:
            boxes, classes = self._ground_truth(dataset_dict, transform, arrays)
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
        out.update(self._voxelize(points, rng))
        return out

    def _voxelize(self, points: np.ndarray, rng) -> dict:
        points = self._range_filter_and_shuffle(points, rng)
        points_t = torch.from_numpy(points)
        voxels, coords, num_points = self.voxelizer(points_t)
        out = {"voxels": voxels, "voxel_coords": coords, "voxel_num_points": num_points}
        if self.keep_points:
            out["points"] = points_t
        return out

    def prepare_points(self, points) -> dict:
        """
        The mapper's point pipeline for a cloud the caller already has: range filter (strict),
        shuffle in training, voxelization; no loading, sweeps, augmentation or ground truth.

        Args:
            points (ndarray or Tensor): (N, C) float, in the keyframe LiDAR frame, with the
                columns of ``INPUT.POINT_FEATURES`` (x, y, z first).

        Returns:
            dict: ``voxels`` (V, M, C), ``voxel_coords`` (V, 3) (z, y, x), ``voxel_num_points``
            (V,) (and ``points`` with ``INPUT.KEEP_POINTS``), a model input without metadata.

        Raises:
            ValueError: if the array is not (N, C) with the config's C, or holds NaN / inf.
        """
        if isinstance(points, torch.Tensor):
            points = points.detach().cpu().numpy()
        points = np.ascontiguousarray(points, dtype=np.float32)
        num_features = len(self.point_features)
        if points.ndim != 2 or points.shape[1] != num_features:
            raise ValueError(
                f"points must be an (N, {num_features}) array with the columns "
                f"{list(self.point_features)} (INPUT.POINT_FEATURES), got shape {points.shape}"
            )
        if not np.isfinite(points).all():
            bad = int((~np.isfinite(points)).any(axis=1).sum())
            raise ValueError(
                f"points hold {bad} rows with NaN or inf values; drop them (e.g. "
                "points[np.isfinite(points).all(axis=1)]) before calling the predictor"
            )
        return self._voxelize(points, self._rng())
