"""SECOND's FPN ("SECFPN"): every backbone level upsampled to one stride and concatenated."""

import torch
from torch import nn

from detectron2.layers import ShapeSpec, get_norm
from detectron2.modeling import BACKBONE_REGISTRY, Backbone

from .regnet import build_regnet_bev_backbone
from .second import build_second_backbone, check_in_features, get_bev_norm

__all__ = ["SECONDFPN", "build_second_secfpn_backbone", "build_regnet_secfpn_backbone"]


class SECONDFPN(Backbone):
    """
    A backbone wrapper: each input level goes through ``ConvTranspose2d(k=s, stride=s, no bias)``
    + norm + ReLU (s = its upsample stride; s = 1 is a 1x1 deconvolution), and the results are
    concatenated into one map ``"secfpn"`` of ``sum(out_channels)`` channels.
    """

    def __init__(self, *, bottom_up, in_features, out_channels, upsample_strides, norm="BN"):
        """
        Args:
            bottom_up (Backbone): the BEV backbone.
            in_features (list[str]): its outputs to use, finest first.
            out_channels (list[int]): channels of each upsampled branch.
            upsample_strides (list[int]): upsampling factor of each branch; the input stride
                divided by it must be the same for every branch (the output stride).
            norm (str or callable): detectron2 norm (see :func:`get_bev_norm`).
        """
        super().__init__()
        if not len(in_features) == len(out_channels) == len(upsample_strides):
            raise ValueError(
                "MODEL.SECFPN.IN_FEATURES, OUT_CHANNELS and UPSAMPLE_STRIDES must have the same "
                f"length, got {in_features}, {out_channels}, {upsample_strides}"
            )
        shapes = bottom_up.output_shape()
        check_in_features(
            "MODEL.SECFPN.IN_FEATURES",
            in_features,
            shapes,
            "the backbone",
            hint="check its OUT_FEATURES",
        )
        out_strides = set()
        for f, s in zip(in_features, upsample_strides):
            if int(s) != s or s < 1 or shapes[f].stride % s:
                raise ValueError(
                    f"upsample stride {s} of {f!r} (stride {shapes[f].stride}) must be a positive "
                    "integer dividing the input stride"
                )
            out_strides.add(shapes[f].stride // int(s))
        if len(out_strides) != 1:
            raise ValueError(
                f"MODEL.SECFPN.UPSAMPLE_STRIDES {upsample_strides} bring {in_features} (strides "
                f"{[shapes[f].stride for f in in_features]}) to different strides {out_strides}"
            )
        self.bottom_up = bottom_up
        self.in_features = list(in_features)
        self.deblocks = nn.ModuleList()
        for f, c_out, s in zip(in_features, out_channels, upsample_strides):
            s = int(s)
            deconv = nn.ConvTranspose2d(shapes[f].channels, c_out, s, stride=s, bias=False)
            nn.init.kaiming_normal_(deconv.weight, mode="fan_out", nonlinearity="relu")
            bn = get_norm(norm, c_out)
            self.deblocks.append(nn.Sequential(deconv, bn, nn.ReLU(inplace=True)))
        self._out_features = ["secfpn"]
        self._out_feature_strides = {"secfpn": out_strides.pop()}
        self._out_feature_channels = {"secfpn": int(sum(out_channels))}
        self._size_divisibility = max(shapes[f].stride for f in in_features)

    @property
    def size_divisibility(self):
        return self._size_divisibility

    def forward_neck(self, features):
        """
        Args:
            features (dict[str, Tensor]): outputs of ``bottom_up``.

        Returns:
            dict[str, Tensor]: ``{"secfpn": (B, sum(out_channels), H / stride, W / stride)}``.
        """
        outs = [block(features[f]) for f, block in zip(self.in_features, self.deblocks)]
        return {"secfpn": torch.cat(outs, dim=1) if len(outs) > 1 else outs[0]}

    def forward(self, x):
        """
        Args:
            x (Tensor): (B, C, H, W) pseudo-image; H and W divisible by ``size_divisibility``.
        """
        return self.forward_neck(self.bottom_up(x))

    def output_shape(self):
        return {
            name: ShapeSpec(
                channels=self._out_feature_channels[name], stride=self._out_feature_strides[name]
            )
            for name in self._out_features
        }


def _build_secfpn(cfg, bottom_up):
    c = cfg.MODEL.SECFPN
    return SECONDFPN(
        bottom_up=bottom_up,
        in_features=list(c.IN_FEATURES),
        out_channels=list(c.OUT_CHANNELS),
        upsample_strides=list(c.UPSAMPLE_STRIDES),
        norm=get_bev_norm(c.NORM, cfg.MODEL.BN_EPS, cfg.MODEL.BN_MOMENTUM),
    )


@BACKBONE_REGISTRY.register()
def build_second_secfpn_backbone(cfg, input_shape: ShapeSpec):
    """SECOND + SECFPN (``MODEL.SECOND.*``, ``MODEL.SECFPN.*``): output ``secfpn``."""
    return _build_secfpn(cfg, build_second_backbone(cfg, input_shape))


@BACKBONE_REGISTRY.register()
def build_regnet_secfpn_backbone(cfg, input_shape: ShapeSpec):
    """Stem-less RegNet + SECFPN (``MODEL.REGNET.*``, ``MODEL.SECFPN.*``): output ``secfpn``."""
    return _build_secfpn(cfg, build_regnet_bev_backbone(cfg, input_shape))
