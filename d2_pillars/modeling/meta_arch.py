# -*- coding: utf-8 -*-
"""The PointPillars meta-architecture: pillars, BEV pseudo-image, backbone and neck, anchor head."""
import logging
from typing import Dict, List, Tuple
import torch
from torch import Tensor, nn

from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import META_ARCH_REGISTRY, Backbone, build_backbone

from ..layers import collate_voxels
from ..structures import LiDARBoxes
from .anchor_head import build_anchor3d_head
from .backbone import check_in_features
from .pillar_encoder import build_pillar_encoder
from .pillar_scatter import PillarScatter

__all__ = ["PointPillars", "INFERENCE_DTYPES"]

logger = logging.getLogger(__name__)

#: ``MODEL.INFERENCE_DTYPE`` values and their torch dtypes.
INFERENCE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@META_ARCH_REGISTRY.register()
class PointPillars(nn.Module):
    """
    PointPillars (:paper:`PointPillars`, Lang et al. 2019) as a detectron2 meta-architecture.

    The mapper voxelizes each point cloud; the model batches the pillars, encodes them
    (``pillar_encoder``), scatters them into a ``(B, C, ny, nx)`` pseudo-image (``scatter``), runs
    the BEV backbone (and neck) and the :class:`Anchor3DHead` on the ``head_in_features`` maps.

    Input: a list of mapper dicts (see docs/internals.md), each with ``voxels`` (V, M, C),
    ``voxel_coords`` (V, 3) (z, y, x), ``voxel_num_points`` (V,), and in training ``gt_boxes3d``
    (LiDARBoxes) and ``gt_classes`` (K,).

    Output: in training a dict ``{"loss_cls", "loss_box_reg", "loss_dir"}``; in inference a list
    ``[{"instances": Instances(image_size=(ny, nx), pred_boxes3d, scores, pred_classes)}]``
    with boxes in the keyframe LiDAR frame.

    Host-to-device copies of the inputs are ``non_blocking`` (asynchronous from the pinned
    batches of a CUDA data loader). At inference the network runs under ``torch.autocast`` when
    ``inference_dtype`` is not float32; the decoding and NMS always run in float32.
    """

    @configurable
    def __init__(
        self,
        *,
        pillar_encoder: nn.Module,
        scatter: nn.Module,
        backbone: Backbone,
        head: nn.Module,
        head_in_features: List[str],
        channels_last: bool = False,
        inference_dtype: str = "float32",
    ):
        """
        Args:
            pillar_encoder (nn.Module): ``(voxels, num_points, coords (V, 4)) -> (V, C)``.
            scatter (nn.Module): ``(features, coords, batch_size) -> (B, C, ny, nx)``.
            backbone (Backbone): BEV backbone (with neck); its outputs include head_in_features.
            head (nn.Module): an :class:`Anchor3DHead` (``forward(features)``,
                ``losses(grid_sizes, *predictions, gt_boxes, gt_classes)``,
                ``inference(grid_sizes, *predictions, image_size)``).
            head_in_features (list[str]): backbone outputs fed to the head, finest first.
            channels_last (bool): convert the backbone and head weights to
                ``torch.channels_last`` (the scatter should then output channels-last too).
            inference_dtype (str): "float32", "float16" or "bfloat16" (:data:`INFERENCE_DTYPES`):
                the autocast dtype of the network at inference.
        """
        super().__init__()
        if inference_dtype not in INFERENCE_DTYPES:
            raise ValueError(
                f"MODEL.INFERENCE_DTYPE must be one of {sorted(INFERENCE_DTYPES)}, got "
                f"{inference_dtype!r} (d2_pillars/config.py)"
            )
        self.inference_dtype = inference_dtype
        self.pillar_encoder = pillar_encoder
        self.scatter = scatter
        self.backbone = backbone
        self.head = head
        self.head_in_features = list(head_in_features)
        self.channels_last = bool(channels_last)
        if self.channels_last:
            # dense part in NHWC (MODEL.CHANNELS_LAST); parameters keep their shapes and names
            self.backbone.to(memory_format=torch.channels_last)
            self.head.to(memory_format=torch.channels_last)
        # Tracks the model's device (detectron2 models use their pixel_mean buffer for this).
        self.register_buffer("_device_tracker", torch.zeros(0), persistent=False)

    @classmethod
    def from_config(cls, cfg):
        pillar_encoder = build_pillar_encoder(cfg)
        scatter = PillarScatter(cfg)
        backbone = build_backbone(cfg, ShapeSpec(channels=pillar_encoder.out_channels, stride=1))
        in_features = list(cfg.MODEL.ANCHOR3D_HEAD.IN_FEATURES)
        shapes = backbone.output_shape()
        check_in_features(
            "MODEL.ANCHOR3D_HEAD.IN_FEATURES",
            in_features,
            shapes,
            f"backbone {cfg.MODEL.BACKBONE.NAME}",
        )
        head = build_anchor3d_head(cfg, [shapes[f] for f in in_features])
        return {
            "pillar_encoder": pillar_encoder,
            "scatter": scatter,
            "backbone": backbone,
            "head": head,
            "head_in_features": in_features,
            "channels_last": cfg.MODEL.CHANNELS_LAST,
            "inference_dtype": cfg.MODEL.INFERENCE_DTYPE,
        }

    @property
    def device(self) -> torch.device:
        return self._device_tracker.device

    def batch_voxels(self, batched_inputs: List[Dict]) -> Tuple[Tensor, Tensor, Tensor]:
        """
        Concatenate the samples' pillars and prepend the batch index to their coordinates.

        Returns:
            voxels (Tensor): (V, M, C) float32; num_points (Tensor): (V,) int;
            coords (Tensor): (V, 4) int ``(batch, z, y, x)``; all on :attr:`device`.
        """
        device = self.device
        batch = []
        for i, x in enumerate(batched_inputs):
            if "voxels" not in x:
                raise KeyError(
                    f"batched_inputs[{i}] has no 'voxels': PointPillars takes voxelized samples; "
                    "build the data loader with d2_pillars' PointCloudMapper"
                )
            batch.append(
                (
                    x["voxels"].to(device, torch.float32, non_blocking=True),
                    x["voxel_coords"].to(device, non_blocking=True),
                    x["voxel_num_points"].to(device, non_blocking=True),
                )
            )
        voxels, coords, num_points = collate_voxels(batch)
        return voxels, num_points, coords

    def forward(self, batched_inputs: List[Dict]):
        """
        Args:
            batched_inputs (list[dict]): mapper outputs (see the class docstring).

        Returns:
            dict[str, Tensor] in training, list[dict] with "instances" in inference.
        """
        if self.training:
            predictions, grid_sizes, _ = self._network(batched_inputs)
            gt_boxes, gt_classes = self._ground_truth(batched_inputs)
            return self.head.losses(grid_sizes, *predictions, gt_boxes, gt_classes)
        device_type = self.device.type
        dtype = INFERENCE_DTYPES[self.inference_dtype]
        with torch.autocast(device_type, dtype=dtype, enabled=dtype != torch.float32):
            predictions, grid_sizes, image_size = self._network(batched_inputs)
        # decode + NMS in float32, also inside a caller's autocast region
        predictions = [[p.float() for p in level] for level in predictions]
        with torch.autocast(device_type, enabled=False):
            results = self.head.inference(grid_sizes, *predictions, image_size)
        return [{"instances": r} for r in results]

    def _network(self, batched_inputs: List[Dict]):
        """Pillars -> pseudo-image -> backbone -> head predictions.

        Returns:
            predictions (tuple of 3 lists of Tensor): :meth:`Anchor3DHead.forward`'s outputs;
            grid_sizes (list[tuple[int, int]]): (H, W) of each head level;
            image_size (tuple[int, int]): (ny, nx) of the pseudo-image.
        """
        voxels, num_points, coords = self.batch_voxels(batched_inputs)
        pillar_features = self.pillar_encoder(voxels, num_points, coords)
        pseudo_image = self.scatter(pillar_features, coords, len(batched_inputs))
        backbone_features = self.backbone(pseudo_image)
        features = [backbone_features[f] for f in self.head_in_features]
        predictions = self.head(features)
        grid_sizes = [tuple(f.shape[-2:]) for f in features]
        return predictions, grid_sizes, tuple(pseudo_image.shape[-2:])

    def _ground_truth(self, batched_inputs: List[Dict]) -> Tuple[List[LiDARBoxes], List[Tensor]]:
        """Per-sample GT boxes and labels on :attr:`device`; boxes with label < 0 are dropped."""
        num_classes = self.head.num_classes
        boxes, classes = [], []
        for i, x in enumerate(batched_inputs):
            if "gt_boxes3d" not in x or "gt_classes" not in x:
                raise KeyError(
                    f"batched_inputs[{i}] has no 'gt_boxes3d'/'gt_classes': training needs "
                    "annotated samples (build the train loader with is_train=True)"
                )
            # checked and filtered where the mapper made them (the host), so that the device
            # never waits for them; then copied asynchronously
            b = x["gt_boxes3d"]
            b = b if isinstance(b, LiDARBoxes) else LiDARBoxes(b)
            c = torch.as_tensor(x["gt_classes"], dtype=torch.int64)
            if len(b) != c.shape[0]:
                raise ValueError(
                    f"batched_inputs[{i}]: {len(b)} gt_boxes3d but {c.shape[0]} gt_classes"
                )
            if c.numel() and int(c.max()) >= num_classes:
                raise ValueError(
                    f"batched_inputs[{i}]: gt class {int(c.max())} >= NUM_CLASSES {num_classes}: "
                    "MODEL.ANCHOR3D_HEAD.NUM_CLASSES must match DATASETS.CLASS_NAMES"
                )
            keep = c >= 0
            boxes.append(b[keep].to(self.device, non_blocking=True))
            classes.append(c[keep].to(self.device, non_blocking=True))
        return boxes, classes
