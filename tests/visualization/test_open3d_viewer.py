"""The interactive viewer: stepping between samples in a hidden window, and the error without a
display."""

import numpy as np
import pytest

o3d = pytest.importorskip("open3d", reason="open3d is not importable here")

from d2_pillars.visualization import open3d_scene as o3s  # noqa: E402
from d2_pillars.visualization import open3d_viewer as o3v  # noqa: E402
from d2_pillars.visualization.style import class_color  # noqa: E402

RANGE = (-40.0, -40.0, 40.0, 40.0)
CLASSES = ["car", "truck", "trailer", "bus"]
GT = np.array([[10.0, 0.0, -1.0, 8.0, 4.0, 3.0, 0.4], [-5.0, 12.0, -1.0, 4.0, 2.0, 1.6, -2.0]])


def test_scene_browser_steps_between_samples(backend):
    if backend == "filament":
        pytest.skip("the browser drives the legacy visualizer; only Filament renders here")
    scenes = [
        o3s.build_scene(None, GT[:1], [0], class_names=CLASSES),
        o3s.build_scene(None, GT[1:], [3], class_names=CLASSES),
    ]
    vis = o3d.visualization.VisualizerWithKeyCallback()
    assert vis.create_window(width=128, height=128, visible=False)
    try:
        browser = o3v.SceneBrowser(vis, lambda i: scenes[i], 2, size=128,
                                   camera=o3s.default_camera(RANGE))  # fmt: skip
        browser.register_keys()

        def shot():
            vis.poll_events()
            vis.update_renderer()
            return (np.asarray(vis.capture_screen_float_buffer(True)) * 255).round()

        def has(img, label):
            return (np.abs(img - class_color(label)).sum(-1) < 40).sum() > 5

        browser.show(0)
        first = shot()
        assert has(first, 0) and not has(first, 3)
        browser.step(+1)
        second = shot()
        assert browser.index == 1 and has(second, 3) and not has(second, 0)
        browser.step(+1)  # wraps around
        assert browser.index == 0 and has(shot(), 0)
        browser.step(-1)
        assert browser.index == 1
    finally:
        vis.destroy_window()


def test_interactive_needs_display(monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    with pytest.raises(RuntimeError, match="--save"):
        o3v.show_interactive(lambda i: o3s.build_scene(None, GT, [0, 3], class_names=CLASSES), 1)
