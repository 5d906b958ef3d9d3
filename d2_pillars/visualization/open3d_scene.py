"""Open3D geometry of a LiDAR sample and the camera that looks at it.

The point cloud is coloured by height or time lag (the colours of the BEV images,
:mod:`.style`); each box set is one ``LineSet`` -- the 12 edges of each box from
``LiDARBoxes.corners()`` plus a heading mark (a line from the box centre to the centre of its front
face and a cross on the front face); ground truth solid, predictions dashed; colour per class
(:func:`.style.class_color`). A :class:`CameraSpec` is a pinhole look-at camera; both the headless
renderer (:mod:`.open3d_render`) and the interactive viewer (:mod:`.open3d_viewer`) take one.

Open3D is imported only when a function here runs (:func:`import_open3d`).
"""

import logging
import math
import numpy as np
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple
import torch

from .inputs import as_numpy, box_labels, box_scores, to_boxes
from .style import class_color, colorize_points, dash_segments

__all__ = [
    "BOX_EDGES",
    "CameraSpec",
    "Scene",
    "box_line_segments",
    "build_box_lineset",
    "build_point_cloud",
    "build_scene",
    "default_camera",
    "import_open3d",
    "set_legacy_camera",
]

logger = logging.getLogger(__name__)


def import_open3d():
    """The ``open3d`` module, or a RuntimeError that says how to install it."""
    try:
        import open3d as o3d
    except Exception as e:  # ImportError, or OSError for a missing system library
        raise RuntimeError(
            f"open3d cannot be imported ({e}); install it (pip install open3d) and the system "
            "libraries of tools/install_system_deps.sh, or use the BEV images (--mode bev)"
        ) from e
    return o3d


# ---------------------------------------------------------------------------------------------- #
# Geometry
# ---------------------------------------------------------------------------------------------- #
def build_point_cloud(
    points,
    color_by: str = "height",
    point_features: Optional[Sequence[str]] = None,
    value_range: Optional[Tuple[float, float]] = None,
):
    """``open3d.geometry.PointCloud`` of (N, C) points (x, y, z first), coloured as in BEV."""
    o3d = import_open3d()
    points = as_numpy(points)
    pcd = o3d.geometry.PointCloud()
    if points.size == 0:
        return pcd
    colors, _, _ = colorize_points(points, color_by, point_features, value_range)
    pcd.points = o3d.utility.Vector3dVector(points[:, :3].astype(np.float64))
    pcd.colors = o3d.utility.Vector3dVector(colors.astype(np.float64) / 255.0)
    return pcd


#: The 12 box edges as corner index pairs (bottom face, top face, verticals).
BOX_EDGES = np.array(
    [[0, 1], [1, 2], [2, 3], [3, 0], [4, 5], [5, 6], [6, 7], [7, 4], [0, 4], [1, 5], [2, 6], [3, 7]]
)


def box_line_segments(boxes, dashed: bool = False, dash: float = 0.35, gap: float = 0.25):
    """(S, 2, 3) line segments drawing each box and its heading, and (S,) the box of each.

    Heading mark: centre -> centre of the front face (corners 0, 3, 4, 7, at +l/2) and the two
    diagonals of the front face. With ``dashed`` every segment is split into ``dash`` meter
    dashes separated by ``gap`` meters (except the heading line, kept solid).
    """
    boxes = to_boxes(boxes)
    corners = as_numpy(boxes.corners()).astype(np.float64)  # (N, 8, 3)
    n = corners.shape[0]
    if n == 0:
        return np.zeros((0, 2, 3)), np.zeros((0,), np.int64)
    edges = corners[:, BOX_EDGES]  # (N, 12, 2, 3)
    front = corners[:, [0, 3, 7, 4]]  # front face, (N, 4, 3)
    front_centre = front.mean(axis=1)
    centre = as_numpy(boxes.center).astype(np.float64)
    cross = np.stack([front[:, [0, 2]], front[:, [1, 3]]], axis=1)  # (N, 2, 2, 3)
    outline = np.concatenate([edges, cross], axis=1)  # (N, 14, 2, 3)
    owner = np.repeat(np.arange(n), outline.shape[1])
    segs = outline.reshape(-1, 2, 3)
    if dashed:
        d = dash_segments(segs[:, 0], segs[:, 1], dash, gap)
        lengths = np.linalg.norm(segs[:, 1] - segs[:, 0], axis=1)
        counts = np.maximum(np.ceil(lengths / (dash + gap)).astype(np.int64), 1)
        owner = np.repeat(owner, counts)
        segs = d
    heading = np.stack([centre, front_centre], axis=1)  # (N, 2, 3)
    return (
        np.concatenate([segs, heading], axis=0),
        np.concatenate([owner, np.arange(n)], axis=0),
    )


def build_box_lineset(boxes, labels=None, scores=None, score_thresh: float = 0.0, dashed=None):
    """``open3d.geometry.LineSet`` of boxes coloured by class label, with heading marks.

    ``scores`` given: boxes below ``score_thresh`` are dropped and lines are dashed (predictions)
    unless ``dashed`` says otherwise.
    """
    o3d = import_open3d()
    boxes = to_boxes(boxes)
    n = len(boxes)
    labels = box_labels(labels, n)
    keep = np.ones(n, dtype=bool)
    if scores is not None:
        keep = box_scores(scores, n) >= score_thresh
    dashed = scores is not None if dashed is None else dashed
    idx = np.nonzero(keep)[0]
    segs, owner = box_line_segments(boxes[torch.as_tensor(idx, dtype=torch.long)], dashed=dashed)
    palette = np.array([class_color(lab) for lab in labels[idx]], np.float64).reshape(-1, 3)
    lines = o3d.geometry.LineSet()
    if len(segs):
        lines.points = o3d.utility.Vector3dVector(segs.reshape(-1, 3))
        lines.lines = o3d.utility.Vector2iVector(np.arange(2 * len(segs)).reshape(-1, 2))
        lines.colors = o3d.utility.Vector3dVector(palette[owner] / 255.0)
    return lines


@dataclass
class Scene:
    """Everything one 3D view shows: named geometries plus what the legend lists."""

    geometries: List[Tuple[str, object]]
    class_names: Sequence[str] = ()
    labels_shown: Tuple[int, ...] = ()
    styles: Optional[dict] = None
    point_scale: Optional[Tuple[str, float, float]] = None
    title: Optional[str] = None


def build_scene(
    points=None,
    gt_boxes=None,
    gt_labels=None,
    pred_boxes=None,
    pred_labels=None,
    pred_scores=None,
    *,
    class_names: Sequence[str] = (),
    score_thresh: float = 0.3,
    color_by: str = "height",
    point_features: Optional[Sequence[str]] = None,
    value_range: Optional[Tuple[float, float]] = None,
    title: Optional[str] = None,
) -> Scene:
    """Build the Open3D geometries of one sample (arguments as :func:`bev.render_bev`)."""
    geoms, labels_shown, styles, point_scale = [], set(), {}, None
    if points is not None and len(points):
        geoms.append(("points", build_point_cloud(points, color_by, point_features, value_range)))
        _, _, (lo, hi) = colorize_points(points[:1], color_by, point_features, value_range)
        if value_range is None and color_by == "time_lag":
            _, _, (lo, hi) = colorize_points(points, color_by, point_features)
        point_scale = (color_by, lo, hi)
    if gt_boxes is not None:
        gt = to_boxes(gt_boxes)
        gl = box_labels(gt_labels, len(gt))
        geoms.append(("gt_boxes", build_box_lineset(gt, gl)))
        labels_shown.update(int(v) for v in np.unique(gl))
        styles["gt"] = "ground truth"
    if pred_boxes is not None:
        pb = to_boxes(pred_boxes)
        pl, ps = box_labels(pred_labels, len(pb)), box_scores(pred_scores, len(pb))
        geoms.append(("pred_boxes", build_box_lineset(pb, pl, ps, score_thresh)))
        labels_shown.update(int(v) for v in np.unique(pl[ps >= score_thresh]))
        styles["pred"] = f"predictions (score >= {score_thresh:.2f})"
    return Scene(geoms, list(class_names), tuple(sorted(labels_shown)), styles, point_scale, title)


# ---------------------------------------------------------------------------------------------- #
# Camera
# ---------------------------------------------------------------------------------------------- #
@dataclass
class CameraSpec:
    """A pinhole camera: ``eye`` looking at ``lookat`` with ``up``; vertical field of view."""

    eye: Tuple[float, float, float] = (-32.0, -22.0, 30.0)
    lookat: Tuple[float, float, float] = (10.0, 0.0, -2.0)
    up: Tuple[float, float, float] = (0.0, 0.0, 1.0)
    fov_deg: float = 55.0

    def extrinsic(self) -> np.ndarray:
        """4x4 world -> camera (OpenCV axes: x right, y down, z forward)."""
        eye, lookat, up = (np.asarray(v, np.float64) for v in (self.eye, self.lookat, self.up))
        fwd = lookat - eye
        fwd /= np.linalg.norm(fwd)
        right = np.cross(fwd, up)
        if np.linalg.norm(right) < 1e-9:
            raise ValueError("camera 'up' is parallel to the viewing direction")
        right /= np.linalg.norm(right)
        down = np.cross(fwd, right)
        rot = np.stack([right, down, fwd])  # rows: camera axes in world coordinates
        ext = np.eye(4)
        ext[:3, :3] = rot
        ext[:3, 3] = -rot @ eye
        return ext

    def focal(self, height: int) -> float:
        return (height / 2.0) / math.tan(math.radians(self.fov_deg) / 2)


def default_camera(
    bev_range: Sequence[float] = (-50.0, -50.0, 50.0, 50.0), ego_yaw: float = 0.0
) -> CameraSpec:
    """A chase view from behind-right and above the sensor, scaled to the BEV range, looking
    along the vehicle heading ``ego_yaw`` (radians in the LiDAR frame)."""
    x_min, y_min, x_max, y_max = (float(v) for v in bev_range)
    extent = max(x_max - x_min, y_max - y_min)
    c, s = math.cos(ego_yaw), math.sin(ego_yaw)

    def rot(x, y, z):
        return (c * x - s * y, s * x + c * y, z)

    return CameraSpec(
        eye=rot(-0.32 * extent, -0.22 * extent, 0.30 * extent),
        lookat=rot(0.10 * extent, 0.0, -2.0),
        up=(0.0, 0.0, 1.0),
        fov_deg=55.0,
    )


def set_legacy_camera(vis, width, height, cam: CameraSpec):
    """Point the camera of a legacy Open3D ``Visualizer`` (a ``width x height`` window) as
    ``cam``: its pinhole intrinsics and look-at extrinsics, with a far plane at 10 km."""
    import_open3d()
    ctr = vis.get_view_control()
    params = ctr.convert_to_pinhole_camera_parameters()
    f = cam.focal(height)
    params.intrinsic.set_intrinsics(
        int(width), int(height), f, f, width / 2 - 0.5, height / 2 - 0.5
    )
    params.extrinsic = cam.extrinsic()
    if not ctr.convert_from_pinhole_camera_parameters(params, allow_arbitrary=True):
        logger.warning("Open3D refused the camera parameters; using its default view")
    ctr.set_constant_z_far(1e4)
    ctr.set_constant_z_near(0.1)
