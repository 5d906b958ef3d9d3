"""The look shared by the BEV and Open3D renderers: point colours."""

import numpy as np
import pytest

from d2_pillars.visualization.style import colorize_points


def test_colorize_points_errors_and_order():
    pts = np.random.default_rng(0).uniform(-3, 3, (10, 3)).astype(np.float32)
    with pytest.raises(ValueError, match="time_lag"):
        colorize_points(pts, "time_lag", ["x", "y", "z"])
    with pytest.raises(ValueError, match="color_by"):
        colorize_points(pts, "intensity")
    z = np.array([[0, 0, -3.0], [0, 0, 0.0], [0, 0, 3.0]], np.float32)
    colors, values, (lo, hi) = colorize_points(z, "height")
    assert (lo, hi) == (-3.0, 3.0) and colors.shape == (3, 3) and colors.dtype == np.uint8
    assert len({tuple(c) for c in colors}) == 3
