"""Draw :class:`VisSample` s (points, ground truth and predictions already in hand): headless PNGs
(:func:`save_samples`, BEV and / or 3D) and the interactive Open3D window (:func:`show_samples`,
N / P for next / previous sample). Where samples come from (datasets, models, results files) is
the engine's business: ``d2_pillars.engine.visualize``.
"""

import logging
import numpy as np
import os
from dataclasses import dataclass
from typing import List, Optional, Sequence

from d2_pillars.structures import LiDARBoxes

from .bev import render_bev, save_png

__all__ = ["VisSample", "save_samples", "show_samples"]

logger = logging.getLogger(__name__)

#: Columns of display points unless the sample says otherwise (x, y, z, time lag).
DEFAULT_POINT_FEATURES = ("x", "y", "z", "time_lag")


@dataclass
class VisSample:
    """One sample to draw; boxes in the keyframe LiDAR frame (package convention)."""

    sample_token: str
    points: Optional[np.ndarray] = None  # (N, C) float32
    point_features: Sequence[str] = DEFAULT_POINT_FEATURES
    gt_boxes: Optional[LiDARBoxes] = None
    gt_labels: Optional[np.ndarray] = None  # (K,) int64
    pred_boxes: Optional[LiDARBoxes] = None
    pred_labels: Optional[np.ndarray] = None
    pred_scores: Optional[np.ndarray] = None
    index: int = 0
    ego_yaw: float = 0.0  # the vehicle's heading in the LiDAR frame (radians)

    @property
    def title(self) -> str:
        return f"#{self.index} {self.sample_token}"


def _bev_kwargs(sample: VisSample, class_names, score_thresh, color_by):
    return dict(
        points=sample.points,
        gt_boxes=sample.gt_boxes,
        gt_labels=sample.gt_labels,
        pred_boxes=sample.pred_boxes,
        pred_labels=sample.pred_labels,
        pred_scores=sample.pred_scores,
        class_names=class_names,
        score_thresh=score_thresh,
        color_by=color_by,
        point_features=sample.point_features,
        title=sample.title,
    )


def save_samples(
    loader,
    indices: Sequence[int],
    out_dir: str,
    *,
    mode: str = "both",
    size: int = 1024,
    score_thresh: float = 0.3,
    color_by: str = "height",
    bev_range: Sequence[float] = (-50.0, -50.0, 50.0, 50.0),
    backend: str = "auto",
) -> List[str]:
    """Render samples headless to ``out_dir/{index:04d}_{token}_{bev|3d}.png``; returns paths.

    ``loader``: ``loader[i] -> VisSample`` and ``loader.class_names`` (label -> name), e.g.
    ``d2_pillars.engine.visualize.SampleLoader``.

    ``mode``: "bev", "3d" or "both". The 3D view uses :func:`open3d_render.render_scene` (first
    working of Filament off-screen, the legacy visualizer's EGL context, or Xvfb); when none
    works, "3d" raises and "both" logs the reason and writes the BEV images only.
    """
    if mode not in ("bev", "3d", "both"):
        raise ValueError(f"mode must be bev, 3d or both, got {mode!r}")
    with_3d = mode != "bev"
    if with_3d:
        from .open3d_render import available_backend, render_scene
        from .open3d_scene import build_scene, default_camera

        try:
            logger.info(
                "3D views rendered with the Open3D backend '%s'", available_backend(backend)
            )
        except RuntimeError as e:
            if mode == "3d":
                raise
            logger.error("%s\nWriting the BEV images only.", e)
            with_3d = False
    paths = []
    for i in indices:
        sample = loader[i]
        stem = os.path.join(out_dir, f"{sample.index:04d}_{_safe(sample.sample_token)}")
        kwargs = _bev_kwargs(sample, loader.class_names, score_thresh, color_by)
        if mode in ("bev", "both"):
            image = render_bev(size=size, bev_range=bev_range, ego_yaw=sample.ego_yaw, **kwargs)
            paths.append(save_png(stem + "_bev.png", image))
        if with_3d:
            scene = build_scene(**kwargs)
            image = render_scene(
                scene, size=size, camera=default_camera(bev_range), backend=backend
            )
            paths.append(save_png(stem + "_3d.png", image))
        logger.info("sample %d (%s): %s", sample.index, sample.sample_token, paths[-1])
    return paths


def show_samples(
    loader,
    indices: Sequence[int],
    *,
    size: int = 1024,
    score_thresh: float = 0.3,
    color_by: str = "height",
    bev_range: Sequence[float] = (-50.0, -50.0, 50.0, 50.0),
):
    """Interactive Open3D window over ``indices`` (N / P: next / previous, Q: quit)."""
    from .open3d_scene import build_scene, default_camera
    from .open3d_viewer import show_interactive

    indices = list(indices)

    def get_scene(k):
        sample = loader[indices[k]]
        return build_scene(**_bev_kwargs(sample, loader.class_names, score_thresh, color_by))

    camera = default_camera(bev_range, loader[indices[0]].ego_yaw)
    show_interactive(get_scene, len(indices), size=size, camera=camera)


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in text)[:40]
