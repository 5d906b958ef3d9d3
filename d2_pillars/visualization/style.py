"""The look that the BEV images and the Open3D scenes share: one colour per class, the background,
points coloured by height or time lag on a dimmed colormap, and predictions drawn as dashed lines.
"""

import numpy as np
from typing import Optional, Sequence, Tuple
import cv2

from .inputs import as_numpy

__all__ = [
    "CLASS_COLORS",
    "IGNORED_COLOR",
    "BACKGROUND",
    "class_color",
    "colormap",
    "colorize_points",
    "dash_segments",
]

#: RGB class colours, indexed by label; chosen to stand out on the dark background and from
#: each other. Labels beyond the list get evenly spaced hues.
CLASS_COLORS = (
    (255, 140, 0),  # orange
    (0, 190, 255),  # sky blue
    (255, 50, 50),  # red
    (60, 220, 60),  # green
    (255, 0, 255),  # magenta
    (255, 255, 0),  # yellow
    (150, 110, 255),  # violet
    (0, 255, 190),  # aquamarine
    (255, 160, 200),  # pink
    (255, 255, 255),  # white
)
#: Colour of boxes whose label is negative (unmapped / ignored ground truth).
IGNORED_COLOR = (128, 128, 128)
BACKGROUND = (16, 16, 20)
POINT_BRIGHTNESS = 0.8  # points are dimmed so that boxes stand out


def class_color(label: int) -> Tuple[int, int, int]:
    """RGB colour (0-255 ints) of a class label; negative labels are grey."""
    label = int(label)
    if label < 0:
        return IGNORED_COLOR
    if label < len(CLASS_COLORS):
        return CLASS_COLORS[label]
    hue = (label * 0.618033988749895) % 1.0  # golden-ratio hue steps
    hsv = np.array([[[hue * 179, 220, 255]]], dtype=np.uint8)
    r, g, b = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0]
    return int(r), int(g), int(b)


def colormap(values01: np.ndarray) -> np.ndarray:
    """(N,) values in [0, 1] -> (N, 3) uint8 RGB (OpenCV's turbo colormap, dimmed)."""
    idx = np.clip(np.round(values01 * 255), 0, 255).astype(np.uint8)
    lut = cv2.applyColorMap(np.arange(256, dtype=np.uint8)[:, None], cv2.COLORMAP_TURBO)[:, 0, ::-1]
    lut = (lut.astype(np.float32) * POINT_BRIGHTNESS).astype(np.uint8)
    return lut[idx]


def colorize_points(
    points,
    color_by: str = "height",
    point_features: Optional[Sequence[str]] = None,
    value_range: Optional[Tuple[float, float]] = None,
):
    """Colours of points for display.

    Args:
        points: (N, C) array or tensor; ``x, y, z`` are the first three columns.
        color_by: ``"height"`` (z) or ``"time_lag"`` (seconds since the keyframe; newest points
            are drawn last).
        point_features: names of the C columns (``INPUT.POINT_FEATURES``); needed to find the
            ``time_lag`` column.
        value_range: (lo, hi) mapped to the ends of the colormap; default: z in [-3, 3] m, time
            lag in [0, max(time_lag)] s.

    Returns:
        colors (N, 3) uint8 RGB, values (N,) float (what was coloured), value_range (lo, hi).
    """
    points = as_numpy(points)
    if points.ndim != 2 or points.shape[1] < 3:
        raise ValueError(f"points must have shape (N, >=3) with x, y, z first; got {points.shape}")
    if color_by == "height":
        values = points[:, 2].astype(np.float64)
        lo, hi = value_range if value_range is not None else (-3.0, 3.0)
    elif color_by == "time_lag":
        names = list(point_features) if point_features is not None else []
        if "time_lag" not in names:
            raise ValueError(
                f"color_by='time_lag' needs a 'time_lag' point column; point_features={names!r} "
                "(set INPUT.POINT_FEATURES to include time_lag, or use color_by='height')"
            )
        col = names.index("time_lag")
        if col >= points.shape[1]:
            raise ValueError(f"points have {points.shape[1]} columns, time_lag is column {col}")
        values = points[:, col].astype(np.float64)
        if value_range is not None:
            lo, hi = value_range
        else:
            lo, hi = 0.0, float(values.max()) if values.size else 0.0
            hi = max(hi, 0.05)
    else:
        raise ValueError(f"color_by must be 'height' or 'time_lag', got {color_by!r}")
    scaled = (values - lo) / max(hi - lo, 1e-6)
    if color_by == "time_lag":
        scaled = 1.0 - scaled  # newest (lag 0) at the warm end of the colormap
    return colormap(np.clip(scaled, 0.0, 1.0)), values, (float(lo), float(hi))


def dash_segments(p0: np.ndarray, p1: np.ndarray, dash: float, gap: float) -> np.ndarray:
    """Split segments ``p0[i] -> p1[i]`` ((E, D) each, D = 2 for pixels or 3 for meters) into
    dashes of length ``dash`` separated by ``gap``; returns (S, 2, D) segments, at least one per
    input segment, in input order."""
    length = np.linalg.norm(p1 - p0, axis=1)
    period = dash + gap
    n = np.maximum(np.ceil(length / period).astype(np.int64), 1)
    seg = np.repeat(np.arange(len(n)), n)
    k = np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n)
    safe = np.maximum(length[seg], 1e-9)
    t0 = np.clip(k * period / safe, 0, 1)
    t1 = np.clip((k * period + dash) / safe, 0, 1)
    d = (p1 - p0)[seg]
    return np.stack([p0[seg] + d * t0[:, None], p0[seg] + d * t1[:, None]], axis=1)
