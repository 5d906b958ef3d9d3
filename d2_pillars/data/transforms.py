"""Global 3D augmentations of a LiDAR scene: points and :class:`LiDARBoxes` move together.

A :class:`GlobalTransform3D` is the composition, in the reference's order, of a rotation about z,
a uniform scaling, a translation, and flips ``y -> -y`` and ``x -> -x``. For points it is one affine
map ``p -> p @ linear.T + offset`` (applied in place, or folded into the sweep transforms by
``points.load_points``); for boxes it calls the matching ``LiDARBoxes`` methods, which also rotate,
scale and mirror velocities. :class:`RandomGlobalTransform3D` draws one per sample.

The point functions below match ``LiDARBoxes.rotate / scale / translate / flip`` one to one.
"""

import math
import numpy as np
from typing import Optional, Sequence
import torch

from d2_pillars.structures import LiDARBoxes

__all__ = [
    "rotation_matrix_z",
    "rotate_points",
    "scale_points",
    "translate_points",
    "flip_points",
    "GlobalTransform3D",
    "RandomGlobalTransform3D",
]


def rotation_matrix_z(angle: float) -> np.ndarray:
    """(3, 3) float64 matrix rotating vectors counter-clockwise about +z by ``angle`` radians."""
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _as_like(m, points):
    if isinstance(points, torch.Tensor):
        return torch.as_tensor(m, dtype=points.dtype, device=points.device)
    return np.asarray(m, dtype=points.dtype)


def _apply_affine(points, linear, offset=None):
    """In place on the first three columns of ``points`` (numpy or torch, (N, C))."""
    points[:, :3] = points[:, :3] @ _as_like(linear, points).T
    if offset is not None:
        points[:, :3] += _as_like(offset, points)
    return points


def rotate_points(points, angle: float):
    """Rotate points about z by ``angle`` (CCW), in place; matches ``LiDARBoxes.rotate``."""
    return _apply_affine(points, rotation_matrix_z(angle))


def scale_points(points, factor: float):
    """Scale xyz about the origin, in place; matches ``LiDARBoxes.scale``."""
    points[:, :3] *= factor
    return points


def translate_points(points, offset: Sequence[float]):
    """Shift xyz by ``offset`` (3,), in place; matches ``LiDARBoxes.translate``."""
    points[:, :3] += _as_like(offset, points)
    return points


def flip_points(points, axis: str = "y"):
    """Mirror points: ``"y"``: y -> -y, ``"x"``: x -> -x, in place; matches ``LiDARBoxes.flip``."""
    if axis not in ("x", "y"):
        raise ValueError(f"flip axis must be 'x' or 'y', got {axis!r}")
    col = 1 if axis == "y" else 0
    points[:, col] = -points[:, col]
    return points


class GlobalTransform3D:
    """Rotate (about z, CCW) -> scale -> translate -> flip y -> flip x, as one affine map.

    Attributes:
        rotation (float): radians.
        scale (float): factor.
        translation (np.ndarray): (3,) meters.
        flip_y, flip_x (bool): mirror y -> -y, x -> -x.
    """

    def __init__(
        self,
        rotation: float = 0.0,
        scale: float = 1.0,
        translation: Sequence[float] = (0.0, 0.0, 0.0),
        flip_y: bool = False,
        flip_x: bool = False,
    ):
        self.rotation = float(rotation)
        self.scale = float(scale)
        self.translation = np.asarray(translation, dtype=np.float64).reshape(3)
        self.flip_y = bool(flip_y)
        self.flip_x = bool(flip_x)
        flip = np.diag([-1.0 if flip_x else 1.0, -1.0 if flip_y else 1.0, 1.0])
        #: (3, 3) float64: points map as ``p @ linear.T + offset``.
        self.linear = flip @ (self.scale * rotation_matrix_z(self.rotation))
        #: (3,) float64.
        self.offset = flip @ self.translation

    def __repr__(self):
        return (
            f"GlobalTransform3D(rotation={self.rotation:.4f}, scale={self.scale:.4f}, "
            f"translation={self.translation.tolist()}, flip_y={self.flip_y}, flip_x={self.flip_x})"
        )

    @property
    def is_identity(self) -> bool:
        return np.array_equal(self.linear, np.eye(3)) and not self.offset.any()

    def apply_points(self, points):
        """Transform the xyz columns of ``points`` ((N, C) numpy or torch) in place; returns it."""
        if self.is_identity:
            return points
        return _apply_affine(points, self.linear, self.offset)

    def apply_boxes(self, boxes: LiDARBoxes) -> LiDARBoxes:
        """Transform ``boxes`` in place (centres, sizes, yaw, velocities) like the points."""
        if self.rotation:
            boxes.rotate(self.rotation)
        if self.scale != 1.0:
            boxes.scale(self.scale)
        if self.translation.any():
            boxes.translate(self.translation.tolist())
        if self.flip_y:
            boxes.flip("y")
        if self.flip_x:
            boxes.flip("x")
        return boxes


class RandomGlobalTransform3D:
    """Draw a :class:`GlobalTransform3D` per sample (the reference ``GlobalRotScaleTrans`` +
    ``RandomFlip3D``): rotation ~ U(rotation_range), scale ~ U(scale_range), translation ~
    N(0, translation_std) per axis, flips with the given probabilities."""

    def __init__(
        self,
        rotation_range: Sequence[float] = (0.0, 0.0),
        scale_range: Sequence[float] = (1.0, 1.0),
        translation_std: Sequence[float] = (0.0, 0.0, 0.0),
        flip_y_prob: float = 0.0,
        flip_x_prob: float = 0.0,
    ):
        self.rotation_range = tuple(float(v) for v in rotation_range)
        self.scale_range = tuple(float(v) for v in scale_range)
        self.translation_std = np.asarray(translation_std, dtype=np.float64).reshape(3)
        self.flip_y_prob = float(flip_y_prob)
        self.flip_x_prob = float(flip_x_prob)
        if len(self.rotation_range) != 2 or len(self.scale_range) != 2:
            raise ValueError("rotation_range and scale_range need [min, max]")
        if self.scale_range[0] <= 0:
            raise ValueError(f"scale_range must be positive, got {self.scale_range}")

    @classmethod
    def from_config(cls, cfg) -> Optional["RandomGlobalTransform3D"]:
        """From ``cfg.INPUT.AUG``; None when ``INPUT.AUG.ENABLED`` is off."""
        aug = cfg.INPUT.AUG
        if not aug.ENABLED:
            return None
        return cls(
            rotation_range=aug.ROTATION_RANGE,
            scale_range=aug.SCALE_RANGE,
            translation_std=aug.TRANSLATION_STD,
            flip_y_prob=aug.FLIP_Y_PROB,
            flip_x_prob=aug.FLIP_X_PROB,
        )

    def __repr__(self):
        return (
            f"RandomGlobalTransform3D(rotation_range={self.rotation_range}, "
            f"scale_range={self.scale_range}, translation_std={self.translation_std.tolist()}, "
            f"flip_y_prob={self.flip_y_prob}, flip_x_prob={self.flip_x_prob})"
        )

    def __call__(self, rng: np.random.Generator) -> GlobalTransform3D:
        return GlobalTransform3D(
            rotation=rng.uniform(*self.rotation_range),
            scale=rng.uniform(*self.scale_range),
            translation=rng.normal(0.0, 1.0, 3) * self.translation_std,
            flip_y=rng.random() < self.flip_y_prob,
            flip_x=rng.random() < self.flip_x_prob,
        )
