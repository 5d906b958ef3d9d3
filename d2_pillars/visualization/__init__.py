"""Visualization: BEV images (numpy + OpenCV) and Open3D scenes of LiDAR samples with ground-truth
and predicted boxes. It draws what it is given: where samples and predictions come from
(datasets, models, results files) is ``d2_pillars.engine.visualize``.

* :mod:`.bev`: :func:`render_bev`, :class:`BEVVisualizer`, :func:`save_png`,
  :func:`save_bev_examples` (best / worst samples next to evaluation metrics);
* :mod:`.open3d_scene`: geometry (:func:`build_scene`), headless PNGs (:func:`render_scene`,
  Filament off-screen, EGL or Xvfb), the interactive viewer (:func:`show_interactive`);
* :mod:`.samples`: :class:`VisSample` and the loops that draw them (:func:`save_samples`,
  :func:`show_samples`).

Open3D is imported only when a 3D function runs, so BEV images work without it.
"""

from .bev import (
    BEVProjector,
    BEVVisualizer,
    class_color,
    colorize_points,
    match_by_center_distance,
    render_bev,
    save_bev_examples,
    save_png,
)
from .open3d_scene import (
    CameraSpec,
    Scene,
    XvfbServer,
    available_backend,
    build_box_lineset,
    build_point_cloud,
    build_scene,
    render_scene,
    save_scene_png,
    show_interactive,
)
from .samples import VisSample, save_samples, show_samples

__all__ = [
    "BEVProjector",
    "BEVVisualizer",
    "class_color",
    "colorize_points",
    "match_by_center_distance",
    "render_bev",
    "save_bev_examples",
    "save_png",
    "CameraSpec",
    "Scene",
    "XvfbServer",
    "available_backend",
    "build_box_lineset",
    "build_point_cloud",
    "build_scene",
    "render_scene",
    "save_scene_png",
    "show_interactive",
    "VisSample",
    "save_samples",
    "show_samples",
]
