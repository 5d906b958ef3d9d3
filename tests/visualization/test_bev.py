"""BEV rendering: pixels checked against an independent projection of the boxes."""

import math
import numpy as np
import os
import cv2

from d2_pillars.visualization.bev import BEVProjector, render_bev, save_png
from d2_pillars.visualization.style import BACKGROUND, class_color

CLASSES = ["car", "truck", "trailer", "bus", "construction_vehicle", "bicycle", "motorcycle",
           "pedestrian", "traffic_cone", "barrier"]  # fmt: skip
RANGE = (-40.0, -40.0, 40.0, 40.0)


def _pixel(x, y, size, bev_range=RANGE):
    """The documented mapping (x up, y left), written out independently of BEVProjector."""
    x_min, y_min, x_max, y_max = bev_range
    mpp = max(x_max - x_min, y_max - y_min) / size
    cx, cy = (x_min + x_max) / 2, (y_min + y_max) / 2
    return size / 2 - (y - cy) / mpp - 0.5, size / 2 - (x - cx) / mpp - 0.5


def _box_bev_points(box):
    """Edge midpoints, front-face midpoint and back-face midpoint of (x, y, z, l, w, h, yaw),
    from the box definition (not LiDARBoxes.corners)."""
    x, y, _, length, width, _, yaw = box[:7]
    fwd = np.array([math.cos(yaw), math.sin(yaw)])
    left = np.array([-math.sin(yaw), math.cos(yaw)])
    c = np.array([x, y])
    return {
        "front": c + fwd * length / 2,
        "back": c - fwd * length / 2,
        "left": c + left * width / 2,
        "right": c - left * width / 2,
        "centre": c,
    }


def _min_color_dist(image, u, v, color, radius=1):
    ui, vi = int(round(u)), int(round(v))
    patch = image[vi - radius : vi + radius + 1, ui - radius : ui + radius + 1].astype(np.float64)
    return np.linalg.norm(patch - np.asarray(color, np.float64), axis=-1).min()


def _ground_points(n=20000, seed=0):
    rng = np.random.default_rng(seed)
    xy = rng.uniform(-40, 40, size=(n, 2))
    z = rng.uniform(-2.0, -1.5, size=(n, 1))
    lag = rng.choice([0.0, 0.05, 0.1, 0.45], size=(n, 1))
    return np.concatenate([xy, z, lag], axis=1).astype(np.float32)


# GT boxes far from the top-left legend; yaw chosen so that a sign error would move the heading.
GT = np.array(
    [
        [8.0, -12.0, -1.0, 4.6, 1.9, 1.7, 0.6],  # car
        [-15.0, -5.0, -0.5, 11.0, 2.9, 3.4, -1.1],  # bus
        [-20.0, -22.0, -1.0, 0.8, 0.7, 1.8, 2.5],  # pedestrian (small)
    ],
    dtype=np.float32,
)
GT_LABELS = np.array([0, 3, 7])


def test_projector_matches_documented_mapping():
    proj = BEVProjector(RANGE, 800)
    xy = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [-40.0, -40.0]])
    expected = np.array([_pixel(x, y, 800) for x, y in xy])
    np.testing.assert_allclose(proj.to_pixel(xy), expected)
    # +x is up (smaller v), +y is left (smaller u)
    (u0, v0), (u1, v1), (u2, v2) = proj.to_pixel(xy[:3])
    assert v1 < v0 and u1 == u0 and u2 < u0 and v2 == v0


def test_gt_box_edges_and_headings_have_class_colours(tmp_path):
    size = 1024
    image = render_bev(
        _ground_points(), GT, GT_LABELS, class_names=CLASSES, size=size, bev_range=RANGE
    )
    assert image.shape == (size, size, 3) and image.dtype == np.uint8
    for box, label in zip(GT, GT_LABELS):
        color = class_color(label)
        pts = _box_bev_points(box)
        for side in ("front", "back", "left", "right"):
            u, v = _pixel(*pts[side], size)
            assert _min_color_dist(image, u, v, color) < 30, (label, side)
        # heading mark: on the way from the centre to the front face, not towards the back
        ahead = 0.3 * pts["centre"] + 0.7 * pts["front"]
        assert _min_color_dist(image, *_pixel(*ahead, size), color) < 30
        if box[3] > 2.0:  # boxes large enough to hold empty pixels between their lines
            behind = 0.3 * pts["centre"] + 0.7 * pts["back"]
            assert _min_color_dist(image, *_pixel(*behind, size), color, radius=0) > 60
            # inside the box, off the heading line, there is no box colour
            inside = pts["centre"] + 0.5 * (pts["left"] - pts["centre"])
            assert _min_color_dist(image, *_pixel(*inside, size), color, radius=0) > 60

    # saved PNG: same size and pixels (BGR on disk), no temporary file left behind
    path = save_png(str(tmp_path / "sub" / "bev.png"), image)
    back = cv2.imread(path, cv2.IMREAD_COLOR)
    assert back.shape == (size, size, 3)
    np.testing.assert_array_equal(back[..., ::-1], image)
    assert os.listdir(tmp_path / "sub") == ["bev.png"]


def test_not_blank_points_rings_legend():
    image = render_bev(
        _ground_points(), GT, GT_LABELS, class_names=CLASSES, size=512, bev_range=RANGE,
        color_by="time_lag", point_features=["x", "y", "z", "time_lag"],
    )  # fmt: skip
    assert image.shape == (512, 512, 3)
    not_bg = np.any(image != np.asarray(BACKGROUND, np.uint8), axis=-1)
    assert not_bg.mean() > 0.1
    # legend (top-left): one swatch per class shown, in the class colours
    legend = image[:200, :250].reshape(-1, 3).astype(np.int64)
    for label in GT_LABELS:
        assert (np.abs(legend - class_color(label)).sum(axis=1) == 0).sum() > 50, label
    # a class not drawn is not in the legend
    assert (np.abs(legend - class_color(1)).sum(axis=1) == 0).sum() == 0
    # a range ring at 20 m crosses the +y axis: u = centre - 20 m / mpp
    u, v = _pixel(0.0, 30.0, 512)
    ring = image[int(round(v)) - 1 : int(round(v)) + 2, int(round(u)) - 2 : int(round(u)) + 3]
    assert ring.max() > 50


def test_predictions_score_threshold_and_dashes():
    size = 800
    pred = np.array(
        [[10.0, 15.0, -1.0, 4.5, 2.0, 1.6, 0.0], [-10.0, 20.0, -1.0, 4.5, 2.0, 1.6, 0.0]]
    )
    labels = np.array([1, 1])
    scores = np.array([0.9, 0.1])
    image = render_bev(
        None, None, None, pred, labels, scores, class_names=CLASSES, score_thresh=0.3,
        size=size, bev_range=RANGE, legend=False, show_scores=False,
    )  # fmt: skip
    color = class_color(1)

    def edge_hits(box):
        pts = _box_bev_points(box)
        corner_a = pts["front"] + (pts["left"] - pts["centre"])
        corner_b = pts["back"] + (pts["left"] - pts["centre"])
        samples = [corner_a + t * (corner_b - corner_a) for t in np.linspace(0.1, 0.9, 40)]
        return np.mean([_min_color_dist(image, *_pixel(*p, size), color, radius=0) < 40
                        for p in samples])  # fmt: skip

    drawn = edge_hits(pred[0])
    assert 0.3 < drawn < 0.95  # dashed: part of the edge, not all of it
    assert edge_hits(pred[1]) == 0.0  # below the score threshold: not drawn
