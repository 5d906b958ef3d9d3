"""Shared fixtures of the visualization tests."""

import pytest


@pytest.fixture(scope="module")
def backend():
    """The Open3D headless rendering backend of this machine; skips the test where none works."""
    pytest.importorskip("open3d", reason="open3d is not importable here")
    from d2_pillars.visualization.open3d_render import available_backend

    try:
        return available_backend("auto")
    except RuntimeError as e:
        pytest.skip(f"no Open3D headless rendering backend works on this machine: {e}")
