"""Visualization: BEV images (numpy + OpenCV) and Open3D scenes of LiDAR samples with ground-truth
and predicted boxes; samples from registered datasets, models or results files.

* :mod:`.bev`: :func:`render_bev`, :class:`BEVVisualizer`, :func:`save_png`,
  :func:`save_bev_examples` (best / worst samples next to evaluation metrics);
* :mod:`.open3d_scene`: geometry (:func:`build_scene`), headless PNGs (:func:`render_scene`,
  Filament off-screen, EGL or Xvfb), the interactive viewer (:func:`show_interactive`);
* :mod:`.sources`: :class:`SampleLoader`, model / results-file predictions, :func:`visualize`
  (what ``tools/visualize.py`` runs).

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
from .sources import (
    ModelPredictions,
    ResultsFilePredictions,
    SampleLoader,
    VisSample,
    build_sample_loader,
    save_samples,
    show_samples,
    visualize,
)

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
    "ModelPredictions",
    "ResultsFilePredictions",
    "SampleLoader",
    "VisSample",
    "build_sample_loader",
    "save_samples",
    "show_samples",
    "visualize",
]
