"""BEV backbones and necks, registered in detectron2's ``BACKBONE_REGISTRY``.

Builders (``MODEL.BACKBONE.NAME``): ``build_second_backbone``, ``build_regnet_bev_backbone``,
``build_second_secfpn_backbone``, ``build_regnet_secfpn_backbone`` (output ``secfpn``, stride 2),
``build_second_fpn_backbone``, ``build_regnet_fpn_backbone`` (outputs ``p1, p2, p3``, strides 2,
4, 8). Each takes ``(cfg, ShapeSpec(channels=pillar channels, stride=1))``.
"""

from .fpn import BEVFPN, build_regnet_fpn_backbone, build_second_fpn_backbone
from .regnet import (
    REGNETX_PRESETS,
    BEVRegNet,
    PassThroughStem,
    build_bev_regnet,
    build_regnet_bev_backbone,
    regnet_stage_parameters,
)
from .secfpn import SECONDFPN, build_regnet_secfpn_backbone, build_second_secfpn_backbone
from .second import SECOND, build_second_backbone, check_in_features, get_bev_norm

__all__ = [
    "BEVFPN",
    "BEVRegNet",
    "REGNETX_PRESETS",
    "SECOND",
    "SECONDFPN",
    "PassThroughStem",
    "build_bev_regnet",
    "build_regnet_bev_backbone",
    "build_regnet_fpn_backbone",
    "build_regnet_secfpn_backbone",
    "build_second_backbone",
    "build_second_fpn_backbone",
    "build_second_secfpn_backbone",
    "check_in_features",
    "get_bev_norm",
    "regnet_stage_parameters",
]
