"""LiDARBoxes: the one box type of d2_pillars, and every conversion to and from it.

Convention (``BOX_CONVENTION_VERSION`` 1; see ARCHITECTURE.md): a box is
``(x, y, z, l, w, h, yaw[, vx, vy])`` in the keyframe LiDAR sensor frame, meters / radians / m/s:

* ``(x, y, z)`` is the geometric centre;
* ``l`` is the extent along the heading, ``w`` across it, ``h`` vertical
  (nuScenes/Lyft ``Box.wlh`` is ``[w, l, h]``);
* ``yaw`` is the heading about +z, counter-clockwise from +x, wrapped to ``[-pi, pi)``;
* ``(vx, vy)`` is the velocity in the x-y plane of the same frame (nuScenes only).
"""

import math
import numpy as np
from typing import List, Optional, Sequence
import torch

__all__ = ["BOX_CONVENTION_VERSION", "LiDARBoxes", "limit_period", "rotation_z"]

#: Version of the box convention above; recorded in every info file and checkpoint.
BOX_CONVENTION_VERSION = 1


def limit_period(val, offset: float = 0.5, period: float = 2 * math.pi):
    """Map ``val`` into ``[-offset * period, (1 - offset) * period)``.

    Computed in float64 and cast back to the input's dtype; a value that the cast rounds onto the
    upper bound (e.g. float32(pi) > pi) moves down one period, so the half-open range holds in the
    returned dtype. (Plain float32 arithmetic maps values just below pi to just below -pi.)
    """
    upper = (1 - offset) * period
    if isinstance(val, torch.Tensor):
        wide = val.double()
        out = (wide - torch.floor(wide / period + offset) * period).to(val.dtype)
        return torch.where(out >= upper, out - period, out)
    arr = np.asarray(val)
    dtype = arr.dtype if np.issubdtype(arr.dtype, np.floating) else np.dtype(np.float64)
    wide = arr.astype(np.float64)
    out = (wide - np.floor(wide / period + offset) * period).astype(dtype)
    out = np.where(out >= dtype.type(upper), out - dtype.type(period), out)
    return out[()] if out.ndim == 0 else out


def rotation_z(angle: torch.Tensor) -> torch.Tensor:
    """(..., 2, 2) matrices rotating x-y vectors counter-clockwise by ``angle`` (radians)."""
    c, s = torch.cos(angle), torch.sin(angle)
    return torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)


def _transform_boxes64(t: torch.Tensor, matrix) -> torch.Tensor:
    """Apply the 4x4 rigid ``matrix`` to a float64 (N, 7|9) box tensor (LiDARBoxes.transform)."""
    m = torch.as_tensor(np.asarray(matrix), dtype=torch.float64, device=t.device)
    if m.shape != (4, 4):
        raise ValueError(f"transform needs a 4x4 matrix, got shape {tuple(m.shape)}")
    rot, trans = m[:3, :3], m[:3, 3]
    out = t.clone()
    out[:, 0:3] = t[:, 0:3] @ rot.T + trans
    zeros = torch.zeros_like(t[:, 6])
    heading = torch.stack([torch.cos(t[:, 6]), torch.sin(t[:, 6]), zeros], 1) @ rot.T
    out[:, 6] = limit_period(torch.atan2(heading[:, 1], heading[:, 0]), 0.5, 2 * math.pi)
    if t.shape[1] == 9:
        vel = torch.cat([t[:, 7:9], torch.zeros_like(t[:, 7:8])], dim=1) @ rot.T
        out[:, 7:9] = vel[:, 0:2]
    return out


class LiDARBoxes:
    """A set of N 3D boxes stored as a float tensor of shape (N, 7) or (N, 9).

    All methods are vectorised over boxes and keep the tensor's device. Geometric transforms
    (``rotate``, ``flip``, ``scale``, ``translate``) work in place and return ``self``; they also
    transform velocity.
    """

    def __init__(self, tensor):
        device = tensor.device if isinstance(tensor, torch.Tensor) else torch.device("cpu")
        tensor = torch.as_tensor(tensor, dtype=torch.float32, device=device)
        if tensor.numel() == 0:
            width = tensor.shape[-1] if tensor.dim() == 2 and tensor.shape[-1] in (7, 9) else 7
            tensor = tensor.reshape(0, width)
        if tensor.dim() != 2 or tensor.shape[-1] not in (7, 9):
            raise ValueError(
                f"LiDARBoxes needs a (N, 7) or (N, 9) tensor (x, y, z, l, w, h, yaw[, vx, vy]); "
                f"got shape {tuple(tensor.shape)}"
            )
        self.tensor = tensor

    # ------------------------------------------------------------------ container protocol
    def __len__(self) -> int:
        return self.tensor.shape[0]

    def __getitem__(self, item) -> "LiDARBoxes":
        if isinstance(item, int):
            return LiDARBoxes(self.tensor[item].view(1, -1))
        return LiDARBoxes(self.tensor[item])

    def __repr__(self) -> str:
        return f"LiDARBoxes(n={len(self)}, dim={self.box_dim}, device={self.device})"

    def clone(self) -> "LiDARBoxes":
        return LiDARBoxes(self.tensor.clone())

    def to(self, *args, **kwargs) -> "LiDARBoxes":
        return LiDARBoxes(self.tensor.to(*args, **kwargs))

    @property
    def device(self) -> torch.device:
        return self.tensor.device

    @property
    def box_dim(self) -> int:
        return self.tensor.shape[1]

    @staticmethod
    def cat(boxes_list: Sequence["LiDARBoxes"]) -> "LiDARBoxes":
        """Concatenate boxes of the same width (7 or 9)."""
        if len(boxes_list) == 0:
            return LiDARBoxes(torch.zeros(0, 7))
        return LiDARBoxes(torch.cat([b.tensor for b in boxes_list], dim=0))

    # ------------------------------------------------------------------ views
    @property
    def center(self) -> torch.Tensor:
        """(N, 3) geometric centres."""
        return self.tensor[:, 0:3]

    @property
    def bottom_center(self) -> torch.Tensor:
        """(N, 3) centres of the bottom faces."""
        bottom = self.tensor[:, 0:3].clone()
        bottom[:, 2] -= self.tensor[:, 5] / 2
        return bottom

    @classmethod
    def from_bottom_center(cls, tensor) -> "LiDARBoxes":
        """Boxes from ``(x, y, z_bottom, l, w, h, yaw[, vx, vy])`` rows whose z is the centre of
        the bottom face (mmdetection3d's custom labels): z is raised by h / 2, once."""
        boxes = cls(torch.as_tensor(tensor, dtype=torch.float32).clone())
        boxes.tensor[:, 2] += boxes.tensor[:, 5] / 2
        return boxes

    @property
    def dims(self) -> torch.Tensor:
        """(N, 3) sizes (l, w, h)."""
        return self.tensor[:, 3:6]

    @property
    def yaw(self) -> torch.Tensor:
        """(N,) headings in radians."""
        return self.tensor[:, 6]

    @property
    def has_velocity(self) -> bool:
        return self.box_dim == 9

    @property
    def velocity(self) -> Optional[torch.Tensor]:
        """(N, 2) velocities (m/s), or None for 7-value boxes."""
        return self.tensor[:, 7:9] if self.has_velocity else None

    # ------------------------------------------------------------------ geometry
    def corners(self) -> torch.Tensor:
        """(N, 8, 3) corners: bottom face 0-3, then top face 4-7, each counter-clockwise seen
        from above, starting at (+l/2, +w/2) in the box frame."""
        unit = self.tensor.new_tensor(
            [[1, 1], [-1, 1], [-1, -1], [1, -1]], dtype=self.tensor.dtype
        )  # (4, 2)
        half = self.dims[:, None, :2] / 2  # (N, 1, 2)
        local_xy = unit[None] * half  # (N, 4, 2)
        rot = rotation_z(self.yaw)  # (N, 2, 2)
        xy = torch.einsum("nij,nkj->nki", rot, local_xy) + self.center[:, None, :2]
        z_bottom = (self.center[:, 2] - self.dims[:, 2] / 2)[:, None].expand(-1, 4)
        z_top = (self.center[:, 2] + self.dims[:, 2] / 2)[:, None].expand(-1, 4)
        bottom = torch.cat([xy, z_bottom[..., None]], dim=-1)
        top = torch.cat([xy, z_top[..., None]], dim=-1)
        return torch.cat([bottom, top], dim=1)

    def bev(self) -> torch.Tensor:
        """(N, 5) rotated BEV rectangles ``(x, y, l, w, yaw)`` (the input of ``d2_pillars.layers``
        rotated IoU / NMS)."""
        return self.tensor[:, [0, 1, 3, 4, 6]]

    def nearest_bev(self) -> torch.Tensor:
        """(N, 4) axis-aligned ``(x1, y1, x2, y2)``: the BEV box with its yaw snapped to the
        nearest multiple of pi/2 (l and w swap when the box is closer to the y axis)."""
        yaw = limit_period(self.yaw, 0.5, math.pi)
        swap = yaw.abs() > math.pi / 4
        ext_x = torch.where(swap, self.dims[:, 1], self.dims[:, 0])
        ext_y = torch.where(swap, self.dims[:, 0], self.dims[:, 1])
        x, y = self.tensor[:, 0], self.tensor[:, 1]
        return torch.stack([x - ext_x / 2, y - ext_y / 2, x + ext_x / 2, y + ext_y / 2], dim=1)

    def to_d2_rotated(self) -> torch.Tensor:
        """(N, 5) detectron2 ``RotatedBoxes`` ``(cx, cy, w, h, angle_deg)``: detectron2's width is
        the extent along the rotated x axis, i.e. our ``l``; angle counter-clockwise."""
        return torch.stack(
            [
                self.tensor[:, 0],
                self.tensor[:, 1],
                self.tensor[:, 3],
                self.tensor[:, 4],
                torch.rad2deg(self.tensor[:, 6]),
            ],
            dim=1,
        )

    @staticmethod
    def from_d2_rotated(rotated, z, h, velocity=None) -> "LiDARBoxes":
        """Inverse of :meth:`to_d2_rotated`, given centre heights ``z`` and heights ``h`` (N,)."""
        rotated = torch.as_tensor(rotated, dtype=torch.float32)
        z = torch.as_tensor(z, dtype=torch.float32, device=rotated.device)
        h = torch.as_tensor(h, dtype=torch.float32, device=rotated.device)
        cols = [
            rotated[:, 0],
            rotated[:, 1],
            z,
            rotated[:, 2],
            rotated[:, 3],
            h,
            torch.deg2rad(rotated[:, 4]),
        ]
        tensor = torch.stack(cols, dim=1)
        if velocity is not None:
            tensor = torch.cat([tensor, torch.as_tensor(velocity).to(tensor)], dim=1)
        return LiDARBoxes(tensor).wrap_yaw()

    def wrap_yaw(self) -> "LiDARBoxes":
        """Wrap yaw into ``[-pi, pi)`` in place."""
        self.tensor[:, 6] = limit_period(self.tensor[:, 6], 0.5, 2 * math.pi)
        return self

    def in_range_bev(self, point_cloud_range: Sequence[float]) -> torch.Tensor:
        """(N,) bool: BEV centre strictly inside ``[x_min, y_min, _, x_max, y_max, _]``."""
        x_min, y_min, _, x_max, y_max, _ = point_cloud_range
        x, y = self.tensor[:, 0], self.tensor[:, 1]
        return (x > x_min) & (x < x_max) & (y > y_min) & (y < y_max)

    def points_in_boxes(self, points, chunk: int = 65536) -> torch.Tensor:
        """(P, N) bool: whether each point (first 3 columns of ``points``) lies in each box
        (faces included)."""
        points = torch.as_tensor(points, device=self.device)[:, :3].to(self.tensor.dtype)
        out = torch.zeros(points.shape[0], len(self), dtype=torch.bool, device=self.device)
        if len(self) == 0 or points.shape[0] == 0:
            return out
        c, s = torch.cos(self.yaw), torch.sin(self.yaw)
        half = self.dims / 2
        for start in range(0, points.shape[0], chunk):
            p = points[start : start + chunk]
            d = p[:, None, :] - self.center[None]  # (P, N, 3)
            local_x = d[..., 0] * c + d[..., 1] * s
            local_y = -d[..., 0] * s + d[..., 1] * c
            out[start : start + chunk] = (
                (local_x.abs() <= half[:, 0])
                & (local_y.abs() <= half[:, 1])
                & (d[..., 2].abs() <= half[:, 2])
            )
        return out

    # ------------------------------------------------------------------ in-place transforms
    def rotate(self, angle: float) -> "LiDARBoxes":
        """Rotate boxes (and velocities) about the frame's z axis by ``angle`` radians (CCW)."""
        rot = rotation_z(torch.as_tensor(angle, dtype=self.tensor.dtype, device=self.device))
        self.tensor[:, 0:2] = self.tensor[:, 0:2] @ rot.T
        self.tensor[:, 6] += angle
        if self.has_velocity:
            self.tensor[:, 7:9] = self.tensor[:, 7:9] @ rot.T
        return self.wrap_yaw()

    def flip(self, axis: str = "y") -> "LiDARBoxes":
        """Mirror the scene: ``"y"`` maps y -> -y (yaw -> -yaw); ``"x"`` maps x -> -x
        (yaw -> pi - yaw). Velocities are mirrored too."""
        if axis == "y":
            self.tensor[:, 1] = -self.tensor[:, 1]
            self.tensor[:, 6] = -self.tensor[:, 6]
            if self.has_velocity:
                self.tensor[:, 8] = -self.tensor[:, 8]
        elif axis == "x":
            self.tensor[:, 0] = -self.tensor[:, 0]
            self.tensor[:, 6] = math.pi - self.tensor[:, 6]
            if self.has_velocity:
                self.tensor[:, 7] = -self.tensor[:, 7]
        else:
            raise ValueError(f"flip axis must be 'x' or 'y', got {axis!r}")
        return self.wrap_yaw()

    def scale(self, factor: float) -> "LiDARBoxes":
        """Scale the scene about the origin: centres, sizes and velocities times ``factor``."""
        self.tensor[:, 0:6] *= factor
        if self.has_velocity:
            self.tensor[:, 7:9] *= factor
        return self

    def translate(self, offset) -> "LiDARBoxes":
        """Shift centres by ``offset`` (3,) meters; velocities are unchanged."""
        self.tensor[:, 0:3] += torch.as_tensor(offset, dtype=self.tensor.dtype, device=self.device)
        return self

    # ------------------------------------------------------------------ frame changes
    def _transformed64(self, matrix) -> torch.Tensor:
        """The (N, 7|9) float64 tensor of :meth:`transform` (global coordinates need float64)."""
        return _transform_boxes64(self.tensor.to(torch.float64), matrix)

    def transform(self, matrix) -> "LiDARBoxes":
        """Boxes expressed in another frame, given the 4x4 rigid transform ``matrix`` that maps
        points of this frame into the new one (e.g. ``lidar2ego``, ``ego2global``).

        Centres are transformed fully; the new yaw is the heading of the rotated box x axis;
        velocities are rotated (as 3D vectors with vz = 0), never translated. Returns a new object
        (float32: use :meth:`to_global_records` for float64 global coordinates).
        """
        return LiDARBoxes(self._transformed64(matrix).to(self.tensor.dtype)).wrap_yaw()

    # ------------------------------------------------------------------ devkit Box conversion
    def to_devkit_boxes(
        self,
        names: Optional[Sequence[str]] = None,
        scores: Optional[Sequence[float]] = None,
        labels: Optional[Sequence[int]] = None,
        box_class=None,
    ) -> list:
        """nuScenes (default) or Lyft ``Box`` objects for these boxes, in this frame.

        ``box_class`` is ``nuscenes.utils.data_classes.Box`` or
        ``lyft_dataset_sdk.utils.data_classes.Box`` (same constructor). Size is ``[w, l, h]``,
        orientation a yaw-only quaternion; velocity ``(vx, vy, 0)`` (NaN when not regressed).
        """
        from pyquaternion import Quaternion

        if box_class is None:
            from nuscenes.utils.data_classes import Box as box_class
        t = self.tensor.detach().cpu().double().numpy()
        boxes = []
        for i in range(t.shape[0]):
            velocity = (t[i, 7], t[i, 8], 0.0) if self.has_velocity else (np.nan,) * 3
            boxes.append(
                box_class(
                    center=t[i, 0:3].tolist(),
                    size=[t[i, 4], t[i, 3], t[i, 5]],
                    orientation=Quaternion(axis=[0, 0, 1], radians=t[i, 6]),
                    label=int(labels[i]) if labels is not None else np.nan,
                    score=float(scores[i]) if scores is not None else np.nan,
                    velocity=velocity,
                    name=names[i] if names is not None else None,
                )
            )
        return boxes

    @staticmethod
    def from_devkit_boxes(boxes: List, with_velocity: bool = False) -> "LiDARBoxes":
        """LiDARBoxes from devkit ``Box`` objects (nuScenes or Lyft), in the boxes' frame.

        Yaw is the heading of the box's rotated x axis, ``atan2(v_y, v_x)`` with
        ``v = R(q) @ [1, 0, 0]`` -- the devkits' evaluation ``quaternion_yaw``. (pyquaternion's
        ``yaw_pitch_roll[0]`` differs from it for tilted boxes.) NaN velocities become 0.
        """
        width = 9 if with_velocity else 7
        out = np.zeros((len(boxes), width), dtype=np.float64)
        for i, box in enumerate(boxes):
            w, l, h = box.wlh
            heading = box.orientation.rotation_matrix[:, 0]
            out[i, 0:7] = [*box.center, l, w, h, math.atan2(heading[1], heading[0])]
            if with_velocity:
                out[i, 7:9] = np.nan_to_num(np.asarray(box.velocity, dtype=np.float64)[:2])
        return LiDARBoxes(torch.from_numpy(out).float()).wrap_yaw()

    @staticmethod
    def from_global_records(
        translation, size_wlh, rotation_wxyz, velocity_xy=None, *, global_to_frame=None
    ) -> "LiDARBoxes":
        """Boxes from devkit-style arrays (``translation`` (N,3) centres, ``size`` (N,3) as
        ``[w, l, h]``, ``rotation`` (N,4) quaternions ``[w, x, y, z]``, optional ``velocity``
        (N,2)), optionally moved into another frame by the 4x4 ``global_to_frame``. Vectorised
        (no Box objects); yaw is the heading of each rotated x axis (q and -q give the same)."""
        translation = np.asarray(translation, dtype=np.float64).reshape(-1, 3)
        size = np.asarray(size_wlh, dtype=np.float64).reshape(-1, 3)
        q = np.asarray(rotation_wxyz, dtype=np.float64).reshape(-1, 4)
        qw, qx, qy, qz = q.T
        yaw = np.arctan2(2 * (qw * qz + qx * qy), 1 - 2 * (qy * qy + qz * qz))
        cols = [translation, size[:, [1, 0, 2]], yaw[:, None]]
        if velocity_xy is not None:
            cols.append(np.nan_to_num(np.asarray(velocity_xy, dtype=np.float64).reshape(-1, 2)))
        t = torch.from_numpy(np.concatenate(cols, axis=1))
        if global_to_frame is not None:
            t = _transform_boxes64(t, global_to_frame)  # in float64: global coordinates are large
        return LiDARBoxes(t.float()).wrap_yaw()

    def to_global_records(self, frame_to_global=None) -> dict:
        """Devkit-style arrays of these boxes (optionally moved by the 4x4 ``frame_to_global``):
        ``translation`` (N,3), ``size`` (N,3) ``[w, l, h]``, ``rotation`` (N,4) yaw-only quaternions
        ``[w, x, y, z]``, ``yaw`` (N,), and ``velocity`` (N,2) for 9-value boxes: float64 numpy,
        computed in float64 (global coordinates are large: float32 rounds them to ~1e-4 m)."""
        if frame_to_global is not None:
            t = self._transformed64(frame_to_global).detach().cpu().numpy()
        else:
            t = self.tensor.detach().cpu().double().numpy()
        yaw = t[:, 6]
        out = {
            "translation": t[:, 0:3],
            "size": t[:, [4, 3, 5]],
            "rotation": np.stack(
                [np.cos(yaw / 2), np.zeros_like(yaw), np.zeros_like(yaw), np.sin(yaw / 2)], 1
            ),
            "yaw": yaw,
        }
        if self.has_velocity:
            out["velocity"] = t[:, 7:9]
        return out
