"""Poses and boxes of the synthetic world: quaternions in the devkits' ``[w, x, y, z]`` order."""

import numpy as np

__all__ = ["quaternion_from_ypr", "quaternion_to_matrix"]


def quaternion_from_ypr(yaw, pitch=0.0, roll=0.0) -> np.ndarray:
    """Quaternions ``[w, x, y, z]`` of ``Rz(yaw) @ Ry(pitch) @ Rx(roll)`` (radians).

    Inputs broadcast; the result has shape ``broadcast_shape + (4,)``, float64, with ``w >= 0``.
    """
    yaw, pitch, roll = np.broadcast_arrays(
        *(np.asarray(v, dtype=np.float64) for v in (yaw, pitch, roll))
    )
    cy, sy = np.cos(yaw / 2), np.sin(yaw / 2)
    cp, sp = np.cos(pitch / 2), np.sin(pitch / 2)
    cr, sr = np.cos(roll / 2), np.sin(roll / 2)
    q = np.stack(
        [
            cy * cp * cr + sy * sp * sr,
            cy * cp * sr - sy * sp * cr,
            cy * sp * cr + sy * cp * sr,
            sy * cp * cr - cy * sp * sr,
        ],
        axis=-1,
    )
    q /= np.linalg.norm(q, axis=-1, keepdims=True)
    return np.where(q[..., :1] < 0, -q, q)


def quaternion_to_matrix(q) -> np.ndarray:
    """Rotation matrices ``(..., 3, 3)`` of quaternions ``(..., 4)`` ``[w, x, y, z]`` (any norm)."""
    q = np.asarray(q, dtype=np.float64)
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    w, x, y, z = np.moveaxis(q, -1, 0)
    return np.stack(
        [
            np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
            np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
            np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1),
        ],
        axis=-2,
    )
