from . import backbone  # noqa: F401  (registers the BEV backbones and necks)
from .anchor_head import ANCHOR3D_HEAD_REGISTRY, Anchor3DHead, build_anchor3d_head  # noqa: F401
from .anchors import Anchor3DGenerator  # noqa: F401
from .box_coder import ResidualBoxCoder  # noqa: F401
from .meta_arch import PointPillars  # noqa: F401  (registers META_ARCH "PointPillars")
from .pillar_encoder import (  # noqa: F401
    PILLAR_ENCODER_REGISTRY,
    PillarFeatureNet,
    build_pillar_encoder,
)
from .pillar_scatter import PillarScatter  # noqa: F401
