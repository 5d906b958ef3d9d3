"""The exportable network: pillars in, raw head outputs out, one sample.

:class:`PillarsNetwork` wraps the modules of a trained :class:`~d2_pillars.modeling.PointPillars`
(shared, not copied, except for the memory-format change on the copy made by
:func:`exportable_copy`) into a module whose ``forward`` uses only operations with static shapes
besides the number of pillars V:

- the pillar net through :meth:`PillarFeatureNet.forward_factored` (dense per-pillar operations
  on ``(V, M, C)`` voxels, the decoration's linear terms taken per pillar instead of per point;
  :meth:`PillarFeatureNet.forward_dense` for encoders without it; both exact for both padded-slot
  modes), in one of two layouts (``pillar_net``):

  - ``"bucketed"`` (default): the pillars are grouped outside the graph by their number of
    points into buckets of ``M_b = 2, 4, 8, ... < M`` slots (``n < M_b``, so every pillar of a
    bucket keeps at least one padded slot, as in the full tensor) and ``M``; the graph runs
    the pillar net on each bucket and concatenates. Each pillar's result is that of the full
    ``(V, M, C)`` tensor (its padded slots are identical rows, and at least one is present
    whenever the full tensor has one), at a fraction of the work: a 10-sweep nuScenes frame
    (M = 64, 14.7 points per pillar) has 0.30 M bucketed rows instead of 1.04 M;
  - ``"dense"``: one ``(V, M, C)`` input, ``V * M`` rows;

- the scatter through :class:`PillarScatter` in its channels-last formulation: one
  ``index_put`` of the ``(V, C)`` features into a flat ``(1, ny * nx, C)`` canvas (ONNX
  ``ScatterND``), viewed as ``(1, C, ny, nx)``;
- the backbone with its neck, and the head's three 1x1 convolutions with the permutation to
  ``(1, H * W * A, K)`` (:meth:`Anchor3DHead.forward`).

Voxelization (the mapper) and the decode + NMS (:meth:`Anchor3DHead.inference`) stay outside, as
CUDA-PointPillars and mmdeploy split PointPillars; both back-ends run the same code there.
"""

import copy
from typing import List, Sequence, Tuple
import torch
from torch import Tensor, nn

from ..modeling.pillar_scatter import PillarScatter

__all__ = [
    "NotExportableError",
    "PillarsNetwork",
    "exportable_copy",
    "split_outputs",
    "INPUT_NAMES",
    "bucket_sizes",
    "PILLAR_NET_VARIANTS",
    "input_names",
    "graph_inputs",
    "output_names",
    "network_module_names",
]

#: Graph inputs of the dense pillar net: voxels (V, M, C) float32, num_points (V,) int32,
#: coords (V, 4) int32 (b, z, y, x).
INPUT_NAMES = ("voxels", "num_points", "coords")
PILLAR_NET_VARIANTS = ("bucketed", "dense")
_KINDS = ("cls", "reg", "dir")


def bucket_sizes(max_points: int) -> List[int]:
    """Slots of the buckets of the "bucketed" layout: 2, 4, 8, ... below ``max_points``, then
    ``max_points``."""
    sizes, m = [], 2
    while m < max_points:
        sizes.append(m)
        m *= 2
    return sizes + [int(max_points)]


def input_names(pillar_net: str, max_points: int) -> List[str]:
    """The graph's input names for a pillar-net layout (``max_points``: M of the voxels)."""
    _check_variant(pillar_net)
    if pillar_net == "dense":
        return list(INPUT_NAMES)
    return [f"{name}_{m}" for m in bucket_sizes(max_points) for name in INPUT_NAMES]


def _check_variant(pillar_net):
    if pillar_net not in PILLAR_NET_VARIANTS:
        raise ValueError(f"pillar_net must be one of {PILLAR_NET_VARIANTS}, got {pillar_net!r}")


def graph_inputs(voxels: Tensor, num_points: Tensor, coords: Tensor, pillar_net: str):
    """The graph inputs (see :func:`input_names`) of one sample's ``(voxels, num_points,
    coords)``: as they are for "dense"; for "bucketed", per bucket of ``M_b`` slots the pillars
    with ``previous M_b <= n < M_b`` points (the last bucket: ``n >= previous M_b``), their first
    ``M_b`` slots, point counts and cells."""
    _check_variant(pillar_net)
    if pillar_net == "dense":
        return voxels, num_points, coords
    max_points = voxels.shape[1]
    n = num_points.long()
    out, low = [], 0
    for m in bucket_sizes(max_points):
        select = (n >= low) & (n < m) if m < max_points else n >= low
        index = select.nonzero(as_tuple=True)[0]
        # slice the slots first (a view), then gather: only m slots per pillar are copied
        # (index_select: ~2x faster than advanced indexing here)
        out += [
            voxels[:, :m].index_select(0, index),
            num_points.index_select(0, index),
            coords.index_select(0, index),
        ]
        low = m
    return tuple(out)


class NotExportableError(ValueError):
    """The model (or its config) has no exportable path to ONNX; the message says which part."""


def output_names(in_features: Sequence[str]) -> List[str]:
    """``cls_<level>`` for every level, then ``reg_<level>``, then ``dir_<level>``."""
    return [f"{kind}_{f}" for kind in _KINDS for f in in_features]


def _check_exportable(model):
    """Raise :class:`NotExportableError` unless ``model`` is a PointPillars-like model whose
    parts have the exportable formulations used by :class:`PillarsNetwork`."""
    if isinstance(model, nn.parallel.DistributedDataParallel):
        model = model.module
    name = type(model).__name__
    missing = [
        a
        for a in ("pillar_encoder", "scatter", "backbone", "head", "head_in_features")
        if not hasattr(model, a)
    ]
    if missing:
        raise NotExportableError(
            f"the model {name} (MODEL.META_ARCHITECTURE) has no exportable path: the ONNX export "
            f"needs a PointPillars model (pillar_encoder, scatter, backbone, head); it lacks "
            f"{', '.join(missing)}"
        )
    encoder = model.pillar_encoder
    if not callable(getattr(encoder, "forward_dense", None)):
        raise NotExportableError(
            f"the pillar encoder {type(encoder).__name__} (MODEL.PILLAR_FEATURE_NET.NAME) has no "
            "forward_dense, the dense eval-mode formulation the ONNX export traces; implement it "
            "(see PillarFeatureNet.forward_dense) or use PillarFeatureNet"
        )
    if not isinstance(model.scatter, PillarScatter):
        raise NotExportableError(
            f"the scatter {type(model.scatter).__name__} is not a PillarScatter: the ONNX export "
            "only knows PillarScatter's flat-canvas formulation"
        )
    for conv in ("conv_cls", "conv_reg", "conv_dir"):
        if not isinstance(getattr(model.head, conv, None), nn.Conv2d):
            raise NotExportableError(
                f"the head {type(model.head).__name__} (MODEL.ANCHOR3D_HEAD.NAME) has no {conv}: "
                "the ONNX export expects Anchor3DHead's outputs (logits, box deltas, directions)"
            )
    return model


class _DensePillarNet(nn.Module):
    """The encoder's dense formulation (``forward_factored`` where the encoder has it, else
    ``forward_dense``) on each ``(voxels, num_points, coords)`` group of the inputs (one group:
    "dense"; one per bucket: "bucketed"), as a module (its own name scope in the graph). Returns
    the concatenated features and cells."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, *inputs: Tensor) -> Tuple[Tensor, Tensor]:
        groups = [inputs[k : k + 3] for k in range(0, len(inputs), 3)]
        # the factored form: ~20 ms less of a 10-sweep frame in OpenVINO (docs/performance.md)
        encode = getattr(self.encoder, "forward_factored", None) or self.encoder.forward_dense
        features = [encode(v, n, c) for v, n, c in groups]
        coords = [c for _, _, c in groups]
        if len(groups) == 1:
            return features[0], coords[0]
        return torch.cat(features), torch.cat(coords)


class PillarsNetwork(nn.Module):
    """
    ``(voxels, num_points, coords)`` of one sample -> the head's raw outputs, a flat tuple:
    ``cls_<level>`` (1, N_l, num_classes), ``reg_<level>`` (1, N_l, code_size), ``dir_<level>``
    (1, N_l, 2) for each of ``head_in_features`` (see :func:`output_names`). Inference only.

    The batch column of ``coords`` must be 0 (one sample per call). The inputs are those of
    :func:`input_names` for ``pillar_net`` and ``max_points`` (``INPUT.MAX_POINTS_PER_VOXEL``),
    made by :func:`graph_inputs`.
    """

    def __init__(self, model: nn.Module, pillar_net: str = "bucketed", max_points: int = 0):
        super().__init__()
        model = _check_exportable(model)
        _check_variant(pillar_net)
        if max_points < 1:
            raise ValueError("PillarsNetwork needs max_points (INPUT.MAX_POINTS_PER_VOXEL)")
        self.variant = pillar_net
        self.max_points = int(max_points)
        self.pillar_net = _DensePillarNet(model.pillar_encoder)
        nx, ny = model.scatter.grid_size
        self.scatter = PillarScatter(nx=nx, ny=ny, channels_last=True)
        self.backbone = model.backbone
        self.head = model.head
        self.in_features = list(model.head_in_features)
        self.eval()

    @property
    def output_names(self) -> List[str]:
        return output_names(self.in_features)

    @property
    def input_names(self) -> List[str]:
        return input_names(self.variant, self.max_points)

    def forward(self, *inputs: Tensor) -> Tuple[Tensor, ...]:
        features, coords = self.pillar_net(*inputs)
        canvas = self.scatter(features, coords, 1)
        maps = self.backbone(canvas)
        logits, deltas, dirs = self.head([maps[f] for f in self.in_features])
        return (*logits, *deltas, *dirs)

    def train(self, mode: bool = True):
        if mode:
            raise RuntimeError("PillarsNetwork is inference only (the pillar net's dense path)")
        return super().train(False)


def network_module_names(model: nn.Module) -> List[str]:
    """The module paths of the :class:`PillarsNetwork` built over the eager ``model`` (the names
    of the exported nodes' scopes, what ``float_modules`` of the int8 export names):
    ``pillar_net``, ``scatter``, ``backbone``, ``head`` and their dotted submodules
    (``pillar_net.encoder.linears.0``, ``backbone.bottom_up.s1``, ``head.conv_reg``, ...)."""
    model = _check_exportable(model)
    parts = (
        ("pillar_net.encoder", model.pillar_encoder),  # _DensePillarNet.encoder
        ("backbone", model.backbone),
        ("head", model.head),
    )
    names = ["pillar_net", "scatter"]
    for prefix, module in parts:
        names += [prefix + (f".{n}" if n else "") for n, _ in module.named_modules()]
    return names


def split_outputs(outputs: Sequence[Tensor], num_levels: int):
    """The flat output tuple of :class:`PillarsNetwork` -> ``(logits, deltas, dirs)`` lists, the
    form :meth:`Anchor3DHead.inference` takes."""
    if len(outputs) != 3 * num_levels:
        raise ValueError(f"expected {3 * num_levels} outputs for {num_levels} levels")
    n = num_levels
    return list(outputs[:n]), list(outputs[n : 2 * n]), list(outputs[2 * n :])


def exportable_copy(model: nn.Module, pillar_net: str = "bucketed", max_points: int = 0):
    """A :class:`PillarsNetwork` over a deep copy of ``model`` in eval mode, with the dense part
    in the default (NCHW-contiguous) memory format: the graph does not depend on
    ``MODEL.CHANNELS_LAST``, and ``model`` itself is left untouched."""
    _check_exportable(model)
    model = copy.deepcopy(model).eval()
    model.backbone.to(memory_format=torch.contiguous_format)
    model.head.to(memory_format=torch.contiguous_format)
    return PillarsNetwork(model, pillar_net, max_points)
