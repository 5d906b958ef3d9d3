"""Open3D geometry against the box definition: box edges, heading marks, dashes, colours."""

import math
import numpy as np
import pytest

pytest.importorskip("open3d", reason="open3d is not importable here")

from d2_pillars.visualization import open3d_scene as o3s  # noqa: E402
from d2_pillars.visualization.style import class_color, colorize_points  # noqa: E402

GT = np.array([[10.0, 0.0, -1.0, 8.0, 4.0, 3.0, 0.4], [-5.0, 12.0, -1.0, 4.0, 2.0, 1.6, -2.0]])


def _corners(box):
    """(8, 3) corners of (x, y, z, l, w, h, yaw) from the definition (any order)."""
    x, y, z, length, width, height, yaw = box[:7]
    c, s = math.cos(yaw), math.sin(yaw)
    out = []
    for lz in (-1, 1):
        for lx, ly in ((1, 1), (-1, 1), (-1, -1), (1, -1)):
            px, py = lx * length / 2, ly * width / 2
            out.append([x + c * px - s * py, y + s * px + c * py, z + lz * height / 2])
    return np.array(out)


def _on_box_surface_edges(points, box, tol=1e-3):
    """Whether each point lies on one of the 12 edges or front-face diagonals of ``box``."""
    x, y, z, length, width, height, yaw = box[:7]
    c, s = math.cos(yaw), math.sin(yaw)
    d = points - np.array([x, y, z])
    local = np.stack([c * d[:, 0] + s * d[:, 1], -s * d[:, 0] + c * d[:, 1], d[:, 2]], 1)
    half = np.array([length, width, height]) / 2
    at_bound = np.abs(np.abs(local) - half) < tol
    inside = np.all(np.abs(local) <= half + tol, axis=1)
    edge = at_bound.sum(axis=1) >= 2
    # front-face diagonals: x = +l/2 and |y|/w == |z|/h
    diag = (
        at_bound[:, 0]
        & (local[:, 0] > 0)
        & (np.abs(np.abs(local[:, 1]) / half[1] - np.abs(local[:, 2]) / half[2]) < tol)
    )
    return inside & (edge | diag)


def test_gt_lineset_edges_heading_colours():
    lines = o3s.build_box_lineset(GT, np.array([0, 3]))
    pts = np.asarray(lines.points)
    segs = pts[np.asarray(lines.lines)]  # (S, 2, 3)
    assert segs.shape[0] == 2 * 15  # 12 edges + 2 front diagonals + heading, per box
    colors = np.asarray(lines.colors)
    for box, label in zip(GT, (0, 3)):
        mine = np.all(np.isclose(colors, np.array(class_color(label)) / 255.0), axis=1)
        assert mine.sum() == 15
        ends = segs[mine].reshape(-1, 3)
        for corner in _corners(box):
            assert np.min(np.linalg.norm(ends - corner, axis=1)) < 1e-4
        # the heading line joins the centre and the front-face centre
        front = box[:3] + box[3] / 2 * np.array([math.cos(box[6]), math.sin(box[6]), 0.0])
        heading = [s for s in segs[mine] if np.allclose(s[0], box[:3], atol=1e-4)]
        assert len(heading) == 1 and np.allclose(heading[0][1], front, atol=1e-4)


def test_pred_lineset_dashed_on_edges_and_thresholded():
    lines = o3s.build_box_lineset(GT, np.array([1, 2]), scores=np.array([0.8, 0.2]),
                                  score_thresh=0.3)  # fmt: skip
    segs = np.asarray(lines.points)[np.asarray(lines.lines)]
    colors = np.asarray(lines.colors)
    assert np.allclose(colors, np.array(class_color(1)) / 255.0)  # box 2 is below threshold
    assert segs.shape[0] > 15  # dashes
    heading = np.all(np.isclose(segs[:, 0], GT[0, :3], atol=1e-4), axis=1)
    assert heading.sum() == 1
    assert _on_box_surface_edges(segs[~heading].reshape(-1, 3), GT[0]).all()
    # dashes leave gaps: total drawn length is below the outline length
    drawn = np.linalg.norm(segs[~heading, 1] - segs[~heading, 0], axis=1).sum()
    full = o3s.box_line_segments(GT[:1])[0]
    assert drawn < 0.8 * np.linalg.norm(full[:-1, 1] - full[:-1, 0], axis=1).sum()


def test_point_cloud_colours_match_bev():
    rng = np.random.default_rng(1)
    pts = np.concatenate([rng.uniform(-10, 10, (500, 3)), rng.uniform(0, 0.5, (500, 1))], 1)
    pcd = o3s.build_point_cloud(pts, "time_lag", ["x", "y", "z", "time_lag"])
    np.testing.assert_allclose(np.asarray(pcd.points), pts[:, :3])
    expected, _, _ = colorize_points(pts, "time_lag", ["x", "y", "z", "time_lag"])
    np.testing.assert_allclose(np.asarray(pcd.colors), expected / 255.0)
