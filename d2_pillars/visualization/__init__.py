"""Visualization: BEV images (numpy + OpenCV) and Open3D scenes of LiDAR samples with ground-truth
and predicted boxes. It draws what it is given: where samples and predictions come from
(datasets, models, results files) is ``d2_pillars.engine.visualize``.

* :mod:`.inputs`: points, boxes, labels and scores as the renderers take them;
* :mod:`.style`: the look both renderers share (:func:`class_color`, :func:`colorize_points`,
  the background, dashed prediction lines);
* :mod:`.bev`: :func:`render_bev`, :class:`BEVVisualizer`, the legend, :func:`save_png`;
* :mod:`.examples`: best / worst samples next to evaluation metrics (:func:`save_bev_examples`,
  :func:`match_by_center_distance`);
* :mod:`.open3d_scene`: geometry (:func:`build_scene`) and the camera (:class:`CameraSpec`);
* :mod:`.open3d_render`: headless PNGs (:func:`render_scene`: Filament off-screen, EGL or Xvfb);
* :mod:`.open3d_viewer`: the interactive window (:func:`show_interactive`);
* :mod:`.samples`: :class:`VisSample` and the loops that draw them (:func:`save_samples`,
  :func:`show_samples`).

Open3D is imported only when a 3D function runs, so BEV images work without it.
"""

from .bev import BEVProjector, BEVVisualizer, render_bev, save_png
from .examples import match_by_center_distance, save_bev_examples
from .open3d_render import XvfbServer, available_backend, render_scene, save_scene_png
from .open3d_scene import CameraSpec, Scene, build_box_lineset, build_point_cloud, build_scene
from .open3d_viewer import show_interactive
from .samples import VisSample, save_samples, show_samples
from .style import class_color, colorize_points

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
