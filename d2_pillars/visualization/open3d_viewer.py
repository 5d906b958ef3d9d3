"""The interactive Open3D window: one sample at a time, N / P to step through the samples with
the view kept, Q / Esc to quit. It needs a display (:func:`has_display`)."""

import logging
import numpy as np
import os
from typing import Callable, Optional

from .open3d_scene import CameraSpec, Scene, default_camera, import_open3d, set_legacy_camera
from .style import BACKGROUND

__all__ = ["KEY_NEXT", "KEY_PREV", "SceneBrowser", "has_display", "show_interactive"]

logger = logging.getLogger(__name__)


def has_display() -> bool:
    """Whether an X11 or Wayland display is configured for this process."""
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


#: GLFW key codes used by the viewer (letters are their upper-case ASCII codes).
KEY_NEXT = (ord("N"), 262)  # N, right arrow
KEY_PREV = (ord("P"), 263)  # P, left arrow


class SceneBrowser:
    """Steps a legacy Open3D visualizer through samples: ``step(+1)`` / ``step(-1)`` replace the
    geometries by those of the next / previous sample, keeping the view (the first sample sets
    the camera). ``register_keys`` binds N / right arrow and P / left arrow."""

    def __init__(
        self,
        vis,
        get_scene: Callable[[int], Scene],
        num_samples: int,
        start: int = 0,
        size: int = 1024,
        camera: Optional[CameraSpec] = None,
    ):
        if num_samples <= 0:
            raise ValueError("nothing to show: num_samples is 0")
        self.vis, self.get_scene, self.num_samples = vis, get_scene, int(num_samples)
        self.index = int(start) % self.num_samples
        self.size, self.camera = int(size), camera or default_camera()
        self._first = True

    def show(self, index: int) -> Scene:
        scene = self.get_scene(index)
        self.index = index
        self.vis.clear_geometries()
        for _, geom in scene.geometries:
            self.vis.add_geometry(geom, reset_bounding_box=self._first)
        if self._first:
            set_legacy_camera(self.vis, self.size, self.size, self.camera)
            self._first = False
        logger.info("[%d/%d] %s", index + 1, self.num_samples, scene.title or "")
        return scene

    def step(self, delta: int) -> Scene:
        return self.show((self.index + delta) % self.num_samples)

    def register_keys(self):
        def callback(delta):
            def on_key(_vis):
                self.step(delta)
                return True  # redraw

            return on_key

        for key in KEY_NEXT:
            self.vis.register_key_callback(key, callback(+1))
        for key in KEY_PREV:
            self.vis.register_key_callback(key, callback(-1))


def show_interactive(
    get_scene: Callable[[int], Scene],
    num_samples: int,
    start: int = 0,
    size: int = 1024,
    camera: Optional[CameraSpec] = None,
    point_size: float = 2.0,
):
    """Open an Open3D window showing ``get_scene(i)``; N / right arrow: next sample,
    P / left arrow: previous, Q / Esc: quit. The view is kept when changing samples.
    """
    if not has_display():
        raise RuntimeError(
            "no display for an interactive window (DISPLAY is not set); pass --save DIR to "
            "render PNGs headless, or run under X forwarding / a desktop session"
        )
    if num_samples <= 0:
        raise ValueError("nothing to show: num_samples is 0")
    o3d = import_open3d()
    vis = o3d.visualization.VisualizerWithKeyCallback()
    if not vis.create_window(window_name="d2_pillars  [N] next  [P] previous  [Q] quit",
                             width=int(size), height=int(size)):  # fmt: skip
        raise RuntimeError(f"Open3D could not open a window on display {os.environ.get('DISPLAY')}")
    opt = vis.get_render_option()
    opt.background_color = np.asarray(BACKGROUND, np.float64) / 255.0
    opt.point_size = float(point_size)
    browser = SceneBrowser(vis, get_scene, num_samples, start, size, camera)
    browser.register_keys()
    browser.show(browser.index)
    vis.run()
    vis.destroy_window()
