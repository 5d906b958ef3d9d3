"""End-to-end inference on one frame, like detectron2's ``DefaultPredictor``."""

import torch

from ..checkpoint import PillarsCheckpointer
from ..data import PointCloudMapper
from .trainer import build_pillars_model

__all__ = ["PillarsPredictor"]


class PillarsPredictor:
    """Load a model from ``cfg`` (``MODEL.WEIGHTS``) and run it on single frames.

    ``predictor(dataset_dict)`` takes one record of a registered dataset (as returned by
    ``DatasetCatalog.get(name)[i]``), runs the test-time point pipeline (keyframe + sweeps,
    range filter, voxelization) and the model, and returns ``{"instances": Instances}`` with
    ``pred_boxes3d`` (LiDARBoxes, keyframe LiDAR frame), ``scores`` and ``pred_classes`` on the CPU.
    """

    def __init__(self, cfg):
        self.cfg = cfg.clone()
        self.model = build_pillars_model(self.cfg)
        self.model.eval()
        if cfg.MODEL.WEIGHTS:
            PillarsCheckpointer(self.model).load(cfg.MODEL.WEIGHTS)
        self.mapper = PointCloudMapper(self.cfg, is_train=False)

    @torch.no_grad()
    def __call__(self, dataset_dict):
        inputs = self.mapper(dataset_dict)
        (output,) = self.model([inputs])
        return {"instances": output["instances"].to("cpu")}
