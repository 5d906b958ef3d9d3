"""SECOND's BEV backbone (the plain PointPillars backbone) and the helpers of the BEV models: their
BN and the check of the features a neck or head takes from a backbone."""

import torch.nn.functional as F
from fvcore.nn import weight_init
from torch import nn

from detectron2.layers import Conv2d, FrozenBatchNorm2d, NaiveSyncBatchNorm, ShapeSpec, get_norm
from detectron2.modeling import BACKBONE_REGISTRY, Backbone

__all__ = ["get_bev_norm", "check_in_features", "SECOND", "build_second_backbone"]


def get_bev_norm(norm, eps=1e-3, momentum=0.01):
    """
    A detectron2 ``norm`` argument (name or callable) with the reference's BN eps and momentum.

    detectron2's ``get_norm("BN")`` uses PyTorch's defaults (eps 1e-5, momentum 0.1); the
    reference trains its BEV networks with eps 1e-3, momentum 0.01.

    Args:
        norm (str): "BN", "naiveSyncBN", "SyncBN", "FrozenBN", "GN" or "" (none).
        eps, momentum (float): BN parameters (PyTorch momentum convention).

    Returns:
        str or callable: to pass as ``norm`` to detectron2 layers (``get_norm(norm, channels)``).
    """
    if norm == "" or norm is None:
        return ""
    factories = {
        "BN": lambda c: nn.BatchNorm2d(c, eps=eps, momentum=momentum),
        "naiveSyncBN": lambda c: NaiveSyncBatchNorm(c, eps=eps, momentum=momentum),
        "SyncBN": lambda c: nn.SyncBatchNorm(c, eps=eps, momentum=momentum),
        "FrozenBN": lambda c: FrozenBatchNorm2d(c, eps=eps),
    }
    if norm in factories:
        return factories[norm]
    if norm == "GN":
        return norm
    raise ValueError(
        f"unknown norm {norm!r}; use one of BN, naiveSyncBN, SyncBN, FrozenBN, GN or ''"
    )


def check_in_features(key, in_features, shapes, producer, hint=""):
    """Raise ValueError unless every name in ``in_features`` (the config list ``key``) is an
    output of ``producer``, whose ``output_shape()`` is ``shapes``; ``hint`` ends the message."""
    missing = [f for f in in_features if f not in shapes]
    if missing:
        raise ValueError(
            f"{key} {list(in_features)} names {missing}, which {producer} does not output (it "
            f"outputs {sorted(shapes)})" + (f"; {hint}" if hint else "")
        )


class SECOND(Backbone):
    """
    SECOND's BEV backbone: stages ``s1..sN``, each a 3x3 stride-s conv followed by ``layer_num``
    3x3 convs, every conv without bias and followed by norm + ReLU. Kaiming (fan-out) init.
    """

    def __init__(
        self,
        *,
        in_channels,
        out_channels,
        layer_nums,
        layer_strides,
        norm="BN",
        out_features=None,
    ):
        """
        Args:
            in_channels (int): channels of the pseudo-image.
            out_channels (list[int]): width of each stage.
            layer_nums (list[int]): extra 3x3 convs of each stage after its strided conv.
            layer_strides (list[int]): stride of each stage.
            norm (str or callable): detectron2 norm (see :func:`get_bev_norm`).
            out_features (list[str]): stages to return ("s1".."sN"); default the last one.
        """
        super().__init__()
        if not len(out_channels) == len(layer_nums) == len(layer_strides):
            raise ValueError(
                "MODEL.SECOND.OUT_CHANNELS, LAYER_NUMS and LAYER_STRIDES must have the same "
                f"length, got {out_channels}, {layer_nums}, {layer_strides}"
            )
        self._out_feature_strides = {}
        self._out_feature_channels = {}
        self.stage_names = []
        stride, c_in = 1, in_channels
        for i, (c_out, num, s) in enumerate(zip(out_channels, layer_nums, layer_strides)):
            layers = []
            for j in range(num + 1):
                conv = Conv2d(
                    c_in if j == 0 else c_out,
                    c_out,
                    kernel_size=3,
                    stride=s if j == 0 else 1,
                    padding=1,
                    bias=False,
                    norm=get_norm(norm, c_out),
                    activation=F.relu,
                )
                weight_init.c2_msra_fill(conv)
                layers.append(conv)
            name = f"s{i + 1}"
            self.add_module(name, nn.Sequential(*layers))
            self.stage_names.append(name)
            stride *= s
            self._out_feature_strides[name] = stride
            self._out_feature_channels[name] = c_out
            c_in = c_out
        self._out_features = list(out_features) if out_features else [self.stage_names[-1]]
        for name in self._out_features:
            if name not in self.stage_names:
                raise ValueError(f"SECOND has stages {self.stage_names}, not {name!r}")

    @property
    def size_divisibility(self):
        return self._out_feature_strides[self.stage_names[-1]]

    def forward(self, x):
        """
        Args:
            x (Tensor): (B, C, H, W) pseudo-image.

        Returns:
            dict[str, Tensor]: the ``out_features`` stages.
        """
        outputs = {}
        for name in self.stage_names:
            x = getattr(self, name)(x)
            if name in self._out_features:
                outputs[name] = x
        return outputs

    def output_shape(self):
        return {
            name: ShapeSpec(
                channels=self._out_feature_channels[name], stride=self._out_feature_strides[name]
            )
            for name in self._out_features
        }


@BACKBONE_REGISTRY.register()
def build_second_backbone(cfg, input_shape: ShapeSpec):
    """SECOND BEV backbone from ``MODEL.SECOND.*`` (no neck)."""
    c = cfg.MODEL.SECOND
    return SECOND(
        in_channels=input_shape.channels,
        out_channels=list(c.OUT_CHANNELS),
        layer_nums=list(c.LAYER_NUMS),
        layer_strides=list(c.LAYER_STRIDES),
        norm=get_bev_norm(c.NORM, cfg.MODEL.BN_EPS, cfg.MODEL.BN_MOMENTUM),
        out_features=list(c.OUT_FEATURES),
    )
