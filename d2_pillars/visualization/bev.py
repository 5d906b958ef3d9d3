"""Bird's-eye-view (BEV) images of a LiDAR sample with numpy + OpenCV.

The image looks down on the keyframe LiDAR frame with **+x pointing up** and **+y pointing left**
(so the scene reads like a map with the vehicle driving up the image). Pixel coordinates follow
OpenCV: ``u`` is the column, ``v`` the row, pixel centres at integers. For a BEV range
``(x_min, y_min, x_max, y_max)`` centred at ``(cx, cy)`` and an image of ``size x size`` pixels
with ``mpp = max(x_max - x_min, y_max - y_min) / size`` meters per pixel::

    u = size / 2 - (y - cy) / mpp - 0.5
    v = size / 2 - (x - cx) / mpp - 0.5

Images are RGB ``uint8`` arrays of shape ``(size, size, 3)``; :func:`save_png` writes them.

Drawing conventions: points coloured by height or time lag (dimmed colormap); ground-truth boxes
as solid lines, predictions dashed and thinner, both in the colour of their class; a heading mark
(centre to the middle of the front face) on every box; range rings around the sensor; a legend
with the classes shown, the line styles, the score threshold and the point colour scale. The
colours and dashes are those of the Open3D scenes too (:mod:`.style`); the legend is also drawn
over the 3D images (:mod:`.open3d_render`).
"""

import math
import numpy as np
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple
import cv2
import torch

from d2_pillars.utils.file_io import atomic_write_bytes

from .inputs import as_numpy, box_labels, box_scores, to_boxes
from .style import BACKGROUND, class_color, colorize_points, colormap, dash_segments

__all__ = ["BEVProjector", "BEVVisualizer", "draw_legend", "render_bev", "save_png"]

RING_COLOR = (70, 70, 80)


@dataclass
class BEVProjector:
    """Maps LiDAR-frame x-y (meters) to image pixels; see the module docstring for the formula."""

    bev_range: Tuple[float, float, float, float] = (-50.0, -50.0, 50.0, 50.0)
    size: int = 1024

    def __post_init__(self):
        x_min, y_min, x_max, y_max = (float(v) for v in self.bev_range)
        if not (x_max > x_min and y_max > y_min):
            raise ValueError(
                f"bev_range must be (x_min, y_min, x_max, y_max); got {self.bev_range}"
            )
        if int(self.size) < 64:
            raise ValueError(f"image size must be at least 64 pixels, got {self.size}")
        self.size = int(self.size)
        self.center = ((x_min + x_max) / 2, (y_min + y_max) / 2)
        self.meters_per_pixel = max(x_max - x_min, y_max - y_min) / self.size

    def to_pixel(self, xy) -> np.ndarray:
        """(..., 2) meters -> (..., 2) float pixel coordinates ``(u, v)``."""
        xy = as_numpy(xy).astype(np.float64)
        half = self.size / 2
        u = half - (xy[..., 1] - self.center[1]) / self.meters_per_pixel - 0.5
        v = half - (xy[..., 0] - self.center[0]) / self.meters_per_pixel - 0.5
        return np.stack([u, v], axis=-1)


_SHIFT = 4  # fractional bits of OpenCV drawing coordinates (sub-pixel precision)


def _fixed(pix: np.ndarray) -> np.ndarray:
    return np.round(pix * (1 << _SHIFT)).astype(np.int32)


def _line_width(style: str, scale: float) -> int:
    """Box line width in pixels: ground truth 3 px at 1024 pixels, predictions 2 px."""
    if style == "gt":
        return max(2, int(math.floor(3 * scale + 0.5)))
    return max(1, int(math.floor(2 * scale + 0.5)))


class BEVVisualizer:
    """Draws one BEV image step by step (like detectron2's ``Visualizer``, for LiDAR).

    Example::

        vis = BEVVisualizer(size=1024, bev_range=(-50, -50, 50, 50), class_names=names)
        vis.draw_range_rings()
        vis.draw_points(points, color_by="height")
        vis.draw_ego(ego_yaw)
        vis.draw_boxes(gt_boxes, gt_labels)                          # solid
        vis.draw_boxes(pred_boxes, pred_labels, pred_scores, score_thresh=0.3)  # dashed
        vis.draw_legend()
        image = vis.get_image()  # (1024, 1024, 3) uint8 RGB
    """

    def __init__(
        self,
        size: int = 1024,
        bev_range: Sequence[float] = (-50.0, -50.0, 50.0, 50.0),
        class_names: Sequence[str] = (),
    ):
        self.projector = BEVProjector(tuple(float(v) for v in bev_range), size)
        self.size = self.projector.size
        self.class_names = list(class_names)
        self.image = np.empty((self.size, self.size, 3), dtype=np.uint8)
        self.image[:] = BACKGROUND
        self.scale = self.size / 1024.0  # line widths and fonts follow the image size
        self._labels_shown = set()
        self._styles_shown = {}  # "gt" / "pred" -> description
        self._point_scale = None  # (color_by, lo, hi)

    # ------------------------------------------------------------------ helpers
    def _thickness(self, base: float) -> int:
        return max(1, int(round(base * self.scale)))

    def _font(self) -> float:
        return max(0.35, 0.55 * self.scale)

    def _text(self, text, org, color=(230, 230, 230), scale=None, thickness=None):
        scale = self._font() if scale is None else scale
        thickness = self._thickness(1.2) if thickness is None else thickness
        org = (int(org[0]), int(org[1]))
        cv2.putText(
            self.image, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thickness + 2,
            cv2.LINE_AA,
        )  # fmt: skip
        cv2.putText(
            self.image, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, color, thickness, cv2.LINE_AA
        )

    # ------------------------------------------------------------------ layers
    def draw_range_rings(self, step: float = 10.0, max_range: Optional[float] = None):
        """Circles every ``step`` meters around the sensor, labelled."""
        if step <= 0:
            return self
        x_min, y_min, x_max, y_max = self.projector.bev_range
        if max_range is None:
            max_range = max(abs(x_min), abs(x_max), abs(y_min), abs(y_max)) * math.sqrt(2)
        centre = self.projector.to_pixel(np.zeros(2))
        radii = np.arange(step, max_range + 1e-6, step)
        for r in radii:
            cv2.circle(
                self.image,
                tuple(_fixed(centre)),
                int(round(r / self.projector.meters_per_pixel * (1 << _SHIFT))),
                RING_COLOR,
                1,
                cv2.LINE_AA,
                _SHIFT,
            )
            label_xy = self.projector.to_pixel(np.array([r / math.sqrt(2), -r / math.sqrt(2)]))
            if 0 <= label_xy[0] < self.size - 40 * self.scale and 10 < label_xy[1] < self.size:
                self._text(
                    f"{r:g} m", label_xy + (3, -3), RING_COLOR, scale=self._font() * 0.8,
                    thickness=1,
                )  # fmt: skip
        return self

    def draw_ego(self, ego_yaw: float = 0.0):
        """The ego marker at the sensor: a triangle pointing along the vehicle's heading,
        ``ego_yaw`` radians in the LiDAR frame (nuScenes' LIDAR_TOP is mounted with +x to the
        vehicle's right, so there ego_yaw ~ pi/2)."""
        tri = np.array([[2.2, 0.0], [-1.4, 1.1], [-1.4, -1.1]])
        c, s = math.cos(ego_yaw), math.sin(ego_yaw)
        pix = [_fixed(self.projector.to_pixel(tri @ np.array([[c, s], [-s, c]])))]
        cv2.fillPoly(self.image, pix, (235, 235, 235), cv2.LINE_AA, _SHIFT)
        cv2.polylines(self.image, pix, True, (0, 0, 0), 1, cv2.LINE_AA, _SHIFT)
        return self

    def draw_points(
        self,
        points,
        color_by: str = "height",
        point_features: Optional[Sequence[str]] = None,
        value_range: Optional[Tuple[float, float]] = None,
        point_size: Optional[int] = None,
    ):
        """Draw (N, C) points (x, y, z first) as squares of ``point_size`` pixels (default:
        ``round(size / 640)``, at least 1: 2 pixels at 1024). Higher / newer points are on top."""
        points = as_numpy(points)
        if points.size == 0:
            return self
        colors, values, (lo, hi) = colorize_points(points, color_by, point_features, value_range)
        self._point_scale = (color_by, lo, hi)
        order = np.argsort(values if color_by == "height" else -values, kind="stable")
        pix = np.floor(self.projector.to_pixel(points[order, :2]) + 0.5).astype(np.int64)
        colors = colors[order]
        point_size = point_size or max(1, int(round(self.size / 640)))
        offsets = np.stack(np.meshgrid(np.arange(point_size), np.arange(point_size)), -1)
        offsets = offsets.reshape(-1, 2) - (point_size - 1) // 2
        for du, dv in offsets:  # at most a few pixel offsets, each vectorised over all points
            u, v = pix[:, 0] + du, pix[:, 1] + dv
            keep = (u >= 0) & (u < self.size) & (v >= 0) & (v < self.size)
            self.image[v[keep], u[keep]] = colors[keep]
        return self

    def draw_boxes(
        self,
        boxes,
        labels=None,
        scores=None,
        score_thresh: float = 0.0,
        style: Optional[str] = None,
        show_scores: bool = True,
    ):
        """Draw boxes in the colour of their class with a heading mark.

        Args:
            boxes: ``LiDARBoxes`` or (N, 7|9) array in the package convention.
            labels: (N,) int class indices (negative: grey); None = all label 0.
            scores: (N,) scores; boxes with ``score < score_thresh`` are skipped. Boxes with
                scores are predictions (dashed, thinner, score printed); without, ground truth.
            style: "gt" (solid) or "pred" (dashed) to override the choice above.
        """
        boxes = to_boxes(boxes)
        n = len(boxes)
        style = style or ("gt" if scores is None else "pred")
        if style not in ("gt", "pred"):
            raise ValueError(f"style must be 'gt' or 'pred', got {style!r}")
        labels = box_labels(labels, n)
        keep = np.ones(n, dtype=bool)
        if scores is not None:
            scores = box_scores(scores, n)
            keep = scores >= score_thresh
        self._styles_shown[style] = (
            f"predictions (score >= {score_thresh:.2f})" if style == "pred" else "ground truth"
        )
        if n == 0 or not keep.any():
            return self
        idx = np.nonzero(keep)[0]
        corners = as_numpy(boxes[torch.as_tensor(idx)].corners())[:, :4, :2]  # (K, 4, 2)
        pix = self.projector.to_pixel(corners)  # (K, 4, 2)
        centre = pix.mean(axis=1)
        front = (pix[:, 0] + pix[:, 3]) / 2  # corners 0 and 3 are at +l/2 (the front face)
        labels_k = labels[idx]
        thickness = _line_width(style, self.scale)
        for lab in np.unique(labels_k):  # one draw call per class
            sel = labels_k == lab
            color = class_color(lab)
            self._labels_shown.add(int(lab))
            if style == "gt":
                cv2.polylines(
                    self.image, _fixed(pix[sel]), True, color, thickness, cv2.LINE_AA, _SHIFT
                )
            else:
                p0 = pix[sel].reshape(-1, 2)
                p1 = np.roll(pix[sel], -1, axis=1).reshape(-1, 2)
                dashes = dash_segments(p0, p1, dash=6 * self.scale + 2, gap=4 * self.scale + 1)
                cv2.polylines(
                    self.image, _fixed(dashes), False, color, thickness, cv2.LINE_AA, _SHIFT
                )
            heading = np.stack([centre[sel], front[sel]], axis=1)
            cv2.polylines(self.image, _fixed(heading), False, color, thickness, cv2.LINE_AA, _SHIFT)
        if style == "pred" and show_scores and scores is not None:
            self._draw_scores(pix, idx, scores, labels)
        return self

    def _draw_scores(self, pix, idx, scores, labels, max_labels: int = 100):
        """Score labels at the bottom-right of the highest-scoring boxes, skipping a label that
        would overlap one already placed (at most ``max_labels`` putText calls)."""
        top = idx[np.argsort(-scores[idx], kind="stable")[:max_labels]]
        order = np.searchsorted(idx, top)
        anchor = pix[order].max(axis=1)  # bottom-right of each box's pixel footprint
        font = self._font() * 0.7
        (tw, th), _ = cv2.getTextSize("0.00", cv2.FONT_HERSHEY_SIMPLEX, font, 1)
        taken = np.zeros((0, 4))
        for (u, v), s, lab in zip(anchor, scores[top], labels[top]):
            rect = np.array([u + 2, v - th, u + 2 + tw, v + 2])
            if len(taken) and np.any(
                (rect[0] < taken[:, 2]) & (taken[:, 0] < rect[2])
                & (rect[1] < taken[:, 3]) & (taken[:, 1] < rect[3])
            ):  # fmt: skip
                continue
            taken = np.vstack([taken, rect])
            self._text(f"{s:.2f}", (u + 2, v), class_color(lab), scale=font, thickness=1)

    def draw_legend(self, title: Optional[str] = None):
        """A legend in the top-left corner: title, classes shown, line styles, point colours."""
        draw_legend(
            self.image,
            class_names=self.class_names,
            labels=self._labels_shown,
            styles=self._styles_shown,
            point_scale=self._point_scale,
            title=title,
        )
        return self

    def get_image(self) -> np.ndarray:
        """(size, size, 3) uint8 RGB."""
        return self.image


def draw_legend(
    image: np.ndarray,
    *,
    class_names: Sequence[str] = (),
    labels=(),
    styles: Optional[dict] = None,
    point_scale: Optional[Tuple[str, float, float]] = None,
    title: Optional[str] = None,
) -> np.ndarray:
    """Draw a legend in the top-left corner of an RGB uint8 ``image`` (in place; also returned).

    Rows: ``title``; a colour swatch and name per class label in ``labels``; a line sample per
    entry of ``styles`` (``{"gt": text, "pred": text}``: solid / dashed); the point colour bar for
    ``point_scale = (color_by, lo, hi)``.
    """
    styles = styles or {}
    size = min(image.shape[:2])
    scale = size / 1024.0
    font = max(0.35, 0.55 * scale)
    th = max(1, int(round(1.2 * scale)))

    def text(s, org, color=(230, 230, 230), fs=font, t=th):
        org = (int(org[0]), int(org[1]))
        cv2.putText(image, s, org, cv2.FONT_HERSHEY_SIMPLEX, fs, (0, 0, 0), t + 2, cv2.LINE_AA)
        cv2.putText(image, s, org, cv2.FONT_HERSHEY_SIMPLEX, fs, color, t, cv2.LINE_AA)

    (_, line_h), _ = cv2.getTextSize("Ag", cv2.FONT_HERSHEY_SIMPLEX, font, th)
    row = int(line_h * 1.9)
    pad = int(10 * scale) + 4
    swatch = int(line_h * 1.4)
    rows = []  # (kind, payload)
    if title:
        rows.append(("text", title))
    for lab in sorted(labels):
        name = (
            class_names[lab]
            if 0 <= lab < len(class_names)
            else ("ignored" if lab < 0 else f"class {lab}")
        )
        rows.append(("class", (lab, name)))
    for style in ("gt", "pred"):
        if style in styles:
            rows.append(("style", (style, styles[style])))
    if point_scale is not None:
        rows.append(("bar", point_scale))
    if not rows:
        return image
    widths = [
        cv2.getTextSize(
            r[1] if r[0] == "text" else (r[1][1] if r[0] in ("class", "style") else "x" * 24),
            cv2.FONT_HERSHEY_SIMPLEX,
            font,
            th,
        )[0][0]
        for r in rows
    ]
    box_w = min(size - 2 * pad, max(widths) + 3 * pad + 2 * swatch)
    box_h = min(size - 2 * pad, len(rows) * row + 2 * pad + (row if rows[-1][0] == "bar" else 0))
    x0, y0 = pad, pad
    region = image[y0 : y0 + box_h, x0 : x0 + box_w]
    region[:] = (region.astype(np.float32) * 0.25 + 10).astype(np.uint8)  # darken
    cv2.rectangle(image, (x0, y0), (x0 + box_w, y0 + box_h), (110, 110, 120), 1)
    y = y0 + pad + line_h
    tx = x0 + pad + 2 * swatch + pad // 2
    for kind, payload in rows:
        if kind == "text":
            text(payload, (x0 + pad, y))
        elif kind == "class":
            lab, name = payload
            cv2.rectangle(
                image, (x0 + pad, y - line_h), (x0 + pad + 2 * swatch, y + 2),
                class_color(lab), -1,
            )  # fmt: skip
            text(name, (tx, y))
        elif kind == "style":
            style, desc = payload
            p0 = np.array([[x0 + pad, y - line_h // 2]], np.float64)
            p1 = p0 + [[2 * swatch, 0]]
            if style == "gt":
                seg = np.stack([p0, p1], 1)
            else:
                seg = dash_segments(p0, p1, dash=6 * scale + 2, gap=4 * scale + 1)
            t = _line_width(style, scale)
            cv2.polylines(image, _fixed(seg), False, (230, 230, 230), t, cv2.LINE_AA, _SHIFT)
            text(desc, (tx, y))
        elif kind == "bar":
            color_by, lo, hi = payload
            label = "height z [m]" if color_by == "height" else "time lag [s]"
            text(f"points: {label}", (x0 + pad, y))
            bar_w = box_w - 2 * pad
            t01 = np.linspace(0, 1, bar_w)
            colors = colormap(t01 if color_by == "height" else 1 - t01)
            top = y + line_h // 2
            image[top : top + line_h, x0 + pad : x0 + pad + bar_w] = colors[None]
            y += row
            fmt = "{:.1f}" if color_by == "height" else "{:.2f}"
            text(fmt.format(lo), (x0 + pad, y + line_h // 2), fs=font * 0.8)
            hi_txt = fmt.format(hi)
            (tw, _), _ = cv2.getTextSize(hi_txt, cv2.FONT_HERSHEY_SIMPLEX, font * 0.8, th)
            text(hi_txt, (x0 + pad + bar_w - tw, y + line_h // 2), fs=font * 0.8)
        y += row
    return image


def render_bev(
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
    size: int = 1024,
    bev_range: Sequence[float] = (-50.0, -50.0, 50.0, 50.0),
    ring_step: float = 10.0,
    legend: bool = True,
    title: Optional[str] = None,
    show_scores: bool = True,
    ego_yaw: float = 0.0,
) -> np.ndarray:
    """Render one sample as a BEV image.

    Args:
        points: (N, C) points in the keyframe LiDAR frame (x, y, z first), or None.
        gt_boxes / pred_boxes: ``LiDARBoxes`` or (K, 7|9) arrays (package convention), or None.
        gt_labels / pred_labels: (K,) int class indices into ``class_names``.
        pred_scores: (K,) scores; predictions below ``score_thresh`` are not drawn.
        color_by: "height" or "time_lag" (needs ``point_features`` naming a time_lag column).
        size: side of the square image in pixels.
        bev_range: (x_min, y_min, x_max, y_max) meters shown (centred, square).
        ring_step: meters between range rings (0: none).
        ego_yaw: the vehicle's heading in the LiDAR frame (radians), for the ego marker.

    Returns:
        (size, size, 3) uint8 RGB image.
    """
    vis = BEVVisualizer(size=size, bev_range=bev_range, class_names=class_names)
    vis.draw_range_rings(ring_step)
    if points is not None:
        vis.draw_points(points, color_by, point_features, value_range)
    vis.draw_ego(ego_yaw)
    if gt_boxes is not None:
        vis.draw_boxes(gt_boxes, gt_labels, style="gt")
    if pred_boxes is not None:
        vis.draw_boxes(
            pred_boxes,
            pred_labels,
            box_scores(pred_scores, len(to_boxes(pred_boxes))),
            score_thresh,
            style="pred",
            show_scores=show_scores,
        )
    if legend:
        vis.draw_legend(title)
    return vis.get_image()


def save_png(path: str, image_rgb: np.ndarray) -> str:
    """Write an RGB uint8 image as PNG atomically (a temporary file renamed into place)."""
    image_rgb = np.asarray(image_rgb)
    if image_rgb.dtype != np.uint8 or image_rgb.ndim != 3 or image_rgb.shape[2] != 3:
        raise ValueError(f"save_png needs an (H, W, 3) uint8 RGB image; got {image_rgb.dtype} "
                         f"{image_rgb.shape}")  # fmt: skip
    ok, buf = cv2.imencode(
        ".png", np.ascontiguousarray(image_rgb[..., ::-1]), [cv2.IMWRITE_PNG_COMPRESSION, 9]
    )
    if not ok:
        raise RuntimeError(f"OpenCV could not encode a PNG for {path}")
    atomic_write_bytes(path, buf.tobytes())
    return path
