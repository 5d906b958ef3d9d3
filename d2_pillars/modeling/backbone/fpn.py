"""detectron2's FPN on the BEV backbones, with the reference neck's BN and ReLU."""

import torch.nn.functional as F

from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, FPN

from .regnet import build_regnet_bev_backbone
from .second import build_second_backbone, check_in_features, get_bev_norm

__all__ = ["BEVFPN", "build_second_fpn_backbone", "build_regnet_fpn_backbone"]

_ACTIVATIONS = {"": None, "relu": F.relu}


class BEVFPN(FPN):
    """
    detectron2's :class:`FPN` (levels ``p{log2 stride}``, nearest x2 top-down, sum fusion) plus an
    activation after every lateral and output conv (conv -> norm -> activation), as the
    reference's mmdet FPN whose ConvModules end with a ReLU. Parameters keep detectron2's names
    (``fpn_lateral{k}``, ``fpn_output{k}``, ``bottom_up.*``).
    """

    def __init__(self, bottom_up, in_features, out_channels, *, activation="relu", **kwargs):
        """
        Args:
            bottom_up, in_features, out_channels, **kwargs: as :class:`FPN` (``norm``,
                ``top_block``, ``fuse_type``).
            activation (str): "relu" or "" (none: detectron2's plain FPN).
        """
        check_in_features(
            "MODEL.FPN.IN_FEATURES",
            in_features,
            bottom_up.output_shape(),
            "the backbone",
            hint="check its OUT_FEATURES",
        )
        if activation not in _ACTIVATIONS:
            raise ValueError(f"MODEL.FPN.ACTIVATION must be 'relu' or '', got {activation!r}")
        super().__init__(bottom_up, in_features, out_channels, **kwargs)
        for conv in self.lateral_convs + self.output_convs:
            conv.activation = _ACTIVATIONS[activation]


def _build_fpn(cfg, bottom_up):
    c = cfg.MODEL.FPN
    return BEVFPN(
        bottom_up,
        list(c.IN_FEATURES),
        c.OUT_CHANNELS,
        norm=get_bev_norm(c.NORM, cfg.MODEL.BN_EPS, cfg.MODEL.BN_MOMENTUM),
        top_block=None,
        fuse_type=c.FUSE_TYPE,
        activation=c.ACTIVATION,
    )


@BACKBONE_REGISTRY.register()
def build_second_fpn_backbone(cfg, input_shape: ShapeSpec):
    """SECOND + FPN (``MODEL.SECOND.*``, ``MODEL.FPN.*``): outputs p1, p2, p3 for s1..s3."""
    return _build_fpn(cfg, build_second_backbone(cfg, input_shape))


@BACKBONE_REGISTRY.register()
def build_regnet_fpn_backbone(cfg, input_shape: ShapeSpec):
    """Stem-less RegNet + FPN (``MODEL.REGNET.*``, ``MODEL.FPN.*``): p1, p2, p3 for s2..s4."""
    return _build_fpn(cfg, build_regnet_bev_backbone(cfg, input_shape))
