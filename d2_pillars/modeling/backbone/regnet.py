"""RegNetX BEV backbone: detectron2's own ``AnyNet`` without a stem (mmdetection3d's NoStemRegNet).

The pseudo-image enters the first stage directly: the stem is a pass-through block whose width is
the pillar width (``MODEL.REGNET.STEM_WIDTH`` = 64), and the stage strides are (1, 2, 2, 2), so s1
runs at full pseudo-image resolution and s2..s4 at strides 2, 4, 8. Stage widths and depths come
from the RegNet parameters (depth, w0, wa, wm, group width) through detectron2's
``generate_regnet_parameters`` and ``adjust_block_compatibility``, exactly as pycls builds them, so
ImageNet checkpoints of pycls load by name (``s{i}.b{j}.f.a`` ...). Only the first block of s1
differs from the ImageNet model: its input is 64 pillar channels instead of the 32-channel stem.
"""

from torch import nn

from detectron2.layers import CNNBlockBase, ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone.regnet import (
    AnyNet,
    ResBottleneckBlock,
    adjust_block_compatibility,
    generate_regnet_parameters,
)

from .second import get_bev_norm

__all__ = [
    "REGNETX_PRESETS",
    "PassThroughStem",
    "BEVRegNet",
    "regnet_stage_parameters",
    "build_bev_regnet",
    "build_regnet_bev_backbone",
]

# RegNetX presets of pycls's model zoo (configs/dds_baselines/regnetx/RegNetX-*_dds_8gpu.yaml):
# generator parameters and the stage widths / depths / group counts they give.
# fmt: off
REGNETX_PRESETS = {
    "400MF": {
        "depth": 22, "w0": 24, "wa": 24.48, "wm": 2.54, "group_width": 16,
        "widths": [32, 64, 160, 384], "depths": [1, 2, 7, 12], "groups": [2, 4, 10, 24],
    },
    "1.6GF": {
        "depth": 18, "w0": 80, "wa": 34.01, "wm": 2.25, "group_width": 24,
        "widths": [72, 168, 408, 912], "depths": [2, 4, 10, 2], "groups": [3, 7, 17, 38],
    },
    "3.2GF": {
        "depth": 25, "w0": 88, "wa": 26.31, "wm": 2.25, "group_width": 48,
        "widths": [96, 192, 432, 1008], "depths": [2, 6, 15, 2], "groups": [2, 4, 9, 21],
    },
}
# fmt: on


class PassThroughStem(CNNBlockBase):
    """A stem that returns its input: ``AnyNet`` builds ``stem_class(3, width, ...)``; the 3 input
    channels are ignored and the stem keeps ``width`` channels at stride 1."""

    def __init__(self, w_in, w_out, norm, activation_class):
        super().__init__(w_out, w_out, 1)

    def forward(self, x):
        return x


class BEVRegNet(AnyNet):
    """detectron2's :class:`AnyNet`, unchanged, plus ``size_divisibility`` (the largest stage
    stride) so that callers can check the BEV grid."""

    @property
    def size_divisibility(self):
        return max(self._out_feature_strides.values())


def regnet_stage_parameters(depth, w0, wa, wm, group_width, bottleneck_ratio=1.0):
    """
    Per-stage widths, depths and group widths of a RegNet, as pycls and detectron2 compute them.

    Returns:
        tuple[list[int], list[int], list[int], list[float]]: widths, depths, group widths,
        bottleneck ratios.
    """
    widths, depths = generate_regnet_parameters(wa, w0, wm, depth)[0:2]
    n = len(widths)
    widths, ratios, group_widths = adjust_block_compatibility(
        widths, [bottleneck_ratio] * n, [group_width] * n
    )
    return widths, list(depths), group_widths, ratios


def build_bev_regnet(
    *,
    in_channels,
    depth,
    w0,
    wa,
    wm,
    group_width,
    strides,
    bottleneck_ratio=1.0,
    se_ratio=0.0,
    norm="BN",
    freeze_at=0,
    out_features=("s2", "s3", "s4"),
):
    """
    Build a stem-less RegNet ``AnyNet`` for BEV pseudo-images.

    Args:
        in_channels (int): pseudo-image channels, the width the first stage sees.
        depth, w0, wa, wm, group_width, bottleneck_ratio, se_ratio: RegNet parameters.
        strides (list[int]): one stride per stage (reference: 1, 2, 2, 2).
        norm (str or callable): detectron2 norm (see :func:`get_bev_norm`).
        freeze_at (int): detectron2 ``freeze_at`` (1 = the pass-through stem, 2 = also s1, ...).
        out_features (list[str]): stages to return.

    Returns:
        BEVRegNet: an ``AnyNet`` with stages ``s1..sN``; the stride of stage i is the product of
        ``strides[:i]``.
    """
    widths, depths, group_widths, ratios = regnet_stage_parameters(
        depth, w0, wa, wm, group_width, bottleneck_ratio
    )
    if len(strides) != len(widths):
        raise ValueError(
            f"MODEL.REGNET.STRIDES has {len(strides)} values but RegNet(depth={depth}, w0={w0}, "
            f"wa={wa}, wm={wm}) has {len(widths)} stages (widths {widths}); give one stride per "
            "stage"
        )
    return BEVRegNet(
        stem_class=PassThroughStem,
        stem_width=in_channels,
        block_class=ResBottleneckBlock,
        depths=depths,
        widths=widths,
        group_widths=group_widths,
        strides=list(strides),
        bottleneck_ratios=ratios,
        se_ratio=se_ratio,
        activation_class=lambda: nn.ReLU(inplace=True),
        freeze_at=freeze_at,
        norm=norm,
        out_features=list(out_features),
    )


@BACKBONE_REGISTRY.register()
def build_regnet_bev_backbone(cfg, input_shape: ShapeSpec):
    """Stem-less RegNet from ``MODEL.REGNET.*`` (no neck)."""
    c = cfg.MODEL.REGNET
    if c.STEM_WIDTH != input_shape.channels:
        raise ValueError(
            f"MODEL.REGNET.STEM_WIDTH ({c.STEM_WIDTH}) must equal the pseudo-image channels "
            f"({input_shape.channels}, MODEL.PILLAR_FEATURE_NET.FEAT_CHANNELS[-1]): the "
            "BEV RegNet has no stem"
        )
    return build_bev_regnet(
        in_channels=input_shape.channels,
        depth=c.DEPTH,
        w0=c.W0,
        wa=c.WA,
        wm=c.WM,
        group_width=c.GROUP_WIDTH,
        strides=list(c.STRIDES),
        bottleneck_ratio=c.BOTTLENECK_RATIO,
        se_ratio=c.SE_RATIO,
        norm=get_bev_norm(c.NORM, cfg.MODEL.BN_EPS, cfg.MODEL.BN_MOMENTUM),
        freeze_at=c.FREEZE_AT,
        out_features=list(c.OUT_FEATURES),
    )
