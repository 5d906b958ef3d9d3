"""End-to-end inference on one frame, like detectron2's ``DefaultPredictor``."""

import torch

from ..data import PointCloudMapper
from .device import inference_device_config
from .trainer import build_pillars_model, load_model_weights

__all__ = ["PillarsPredictor"]


class PillarsPredictor:
    """Load a model from ``cfg`` (``MODEL.WEIGHTS``) and run it on single frames.

    - ``predictor(dataset_dict)`` takes one record of a registered dataset (as returned by
      ``DatasetCatalog.get(name)[i]``) and runs the test-time point pipeline (keyframe + sweeps,
      range filter, voxelization) and the model;
    - ``predictor.predict_points(points)`` takes a cloud the caller already has.

    Both return ``{"instances": Instances}`` with ``pred_boxes3d`` (LiDARBoxes, keyframe LiDAR
    frame), ``scores`` and ``pred_classes`` on the CPU. ``MODEL.DEVICE cuda`` on a machine without
    CUDA runs on the CPU (one warning).
    """

    def __init__(self, cfg):
        self.cfg = inference_device_config(cfg.clone())
        self.model = build_pillars_model(self.cfg)
        self.model.eval()
        load_model_weights(self.cfg, self.model)
        self.mapper = PointCloudMapper(self.cfg, is_train=False)

    @torch.no_grad()
    def __call__(self, dataset_dict):
        return self._run(self.mapper(dataset_dict))

    @torch.no_grad()
    def predict_points(self, points):
        """
        Detect objects in a point cloud already in the keyframe LiDAR frame.

        Args:
            points (ndarray or Tensor): (N, C) float32 with the config's ``INPUT.POINT_FEATURES``
                columns (for the seed configs x, y, z in meters and the time lag in seconds, 0
                for a single sweep). The test range filter and the voxelization are those of the
                mapper (:meth:`PointCloudMapper.prepare_points`).

        Returns:
            dict: ``{"instances": Instances}`` as :meth:`__call__`.
        """
        return self._run(self.mapper.prepare_points(points))

    def _run(self, inputs):
        (output,) = self.model([inputs])
        return {"instances": output["instances"].to("cpu")}
