"""Pillar feature net and scatter: from voxelized points to the BEV pseudo-image.

:class:`PillarFeatureNet` decorates every point of a pillar (offsets to the pillar's point mean and
to its geometric centre, optionally the distance to the sensor), runs Linear-BN-ReLU layers and
max-pools over the points of each pillar. Two treatments of the zero-padded slots of the
``(V, M, C)`` voxel tensor (``MODEL.PILLAR_FEATURE_NET.PADDED_SLOTS``):

- ``True`` (the seed configs): exactly the reference (mmdetection3d ``HardVFE``), where every
  padded slot is a zero row that goes through the layers, enters the BN statistics and the max
  over the pillar. All padded rows of a pillar are equal, so one *virtual* row per non-full pillar,
  weighted by its number of padded slots in the BN statistics, gives the same result;
- ``False``: the valid points only (padded slots never enter the statistics or the max).

Neither mode allocates a ``(V, M, C')`` intermediate; :meth:`PillarFeatureNet.forward_dense` is
the dense formulation of both (inference only), the one that graph exporters trace.

:class:`~.pillar_scatter.PillarScatter` then writes the pillar features into the BEV canvas.
"""

import torch
from fvcore.nn.distributed import differentiable_all_reduce
from torch import distributed as dist
from torch import nn
from torch.nn import functional as F

from detectron2.config import configurable
from detectron2.layers import NaiveSyncBatchNorm
from detectron2.utils import comm
from detectron2.utils.registry import Registry

from .pillar_scatter import grid_size_from_range

__all__ = [
    "PILLAR_ENCODER_REGISTRY",
    "build_pillar_encoder",
    "PillarFeatureNet",
    "NaiveSyncBatchNorm1d",
    "segment_max",
    "weighted_batch_norm",
]

PILLAR_ENCODER_REGISTRY = Registry("PILLAR_ENCODER")
PILLAR_ENCODER_REGISTRY.__doc__ = """
Registry for pillar encoders, which turn voxelized points into one feature vector per pillar.

The registered object is called with ``obj(cfg)`` and must return an ``nn.Module`` with an
``out_channels`` attribute, called as ``module(voxels (V, M, C), num_points (V,), coords (V, 4))``
and returning ``(V, out_channels)``.
"""


def build_pillar_encoder(cfg):
    """Build the pillar encoder named by ``cfg.MODEL.PILLAR_FEATURE_NET.NAME``."""
    name = cfg.MODEL.PILLAR_FEATURE_NET.NAME
    return PILLAR_ENCODER_REGISTRY.get(name)(cfg)


class NaiveSyncBatchNorm1d(NaiveSyncBatchNorm):
    """
    detectron2's :class:`NaiveSyncBatchNorm` (each worker's statistics weighted equally, as the
    reference's ``naiveSyncBN1d``) for ``(N, C)`` inputs.
    """

    def forward(self, input):
        if input.dim() != 2:
            raise ValueError(f"NaiveSyncBatchNorm1d expects (N, C), got {tuple(input.shape)}")
        return super().forward(input[:, :, None, None])[:, :, 0, 0]


def weighted_batch_norm(norm, x, pad, pad_counts, total_rows):
    """
    Training-mode batch norm over the rows of ``x`` plus rows ``pad[i]`` repeated
    ``pad_counts[i]`` times, without materialising the repeats.

    This is exactly the BN of the reference's ``(V, M, C)`` tensor in which every padded slot of a
    pillar holds the same row. Statistics, running-stat updates (PyTorch's unbiased running
    variance for ``BatchNorm1d``; detectron2's equal-weight mean / mean-of-squares all-reduce for
    :class:`NaiveSyncBatchNorm1d` in multi-process training) and gradients are those of that BN.

    Args:
        norm (nn.Module): a ``BatchNorm1d`` or :class:`NaiveSyncBatchNorm1d` in training mode.
        x (Tensor): (P, C) rows of weight 1.
        pad (Tensor): (Q, C) rows of weight ``pad_counts``.
        pad_counts (Tensor): (Q,) float, repeats of each pad row.
        total_rows (int): ``P + sum(pad_counts)`` (V * M).

    Returns:
        tuple[Tensor, Tensor]: normalised ``x`` (P, C) and ``pad`` (Q, C) in the dtype of ``x``
        (under autocast: the autocast dtype, as ``nn.BatchNorm1d`` returns); the statistics and
        the normalisation are computed in float32.
    """
    dtype = x.dtype
    x, pad = x.float(), pad.float()
    w = pad_counts.float()[:, None]
    distributed = (
        isinstance(norm, NaiveSyncBatchNorm) and dist.is_initialized() and comm.get_world_size() > 1
    )
    if distributed:
        # detectron2's NaiveSyncBatchNorm: every worker's mean and E[x^2] weighted equally
        mean = (x.sum(0) + (pad * w).sum(0)) / total_rows
        meansqr = ((x * x).sum(0) + (pad * pad * w).sum(0)) / total_rows
        vec = differentiable_all_reduce(torch.cat([mean, meansqr])) / comm.get_world_size()
        mean, meansqr = torch.split(vec, x.shape[1])
        var = meansqr - mean * mean
        running_var = var
    else:
        mean = (x.sum(0) + (pad * w).sum(0)) / total_rows
        var = (((x - mean) ** 2).sum(0) + (((pad - mean) ** 2) * w).sum(0)) / total_rows
        running_var = var * (total_rows / max(total_rows - 1, 1))
    if norm.track_running_stats:
        with torch.no_grad():
            momentum = norm.momentum if norm.momentum is not None else 0.0
            norm.num_batches_tracked.add_(1)
            if norm.momentum is None:  # cumulative average, as nn.BatchNorm
                momentum = 1.0 / float(norm.num_batches_tracked)
            norm.running_mean.mul_(1 - momentum).add_(mean.detach(), alpha=momentum)
            norm.running_var.mul_(1 - momentum).add_(running_var.detach(), alpha=momentum)
    scale = torch.rsqrt(var + norm.eps)
    if norm.affine:
        scale = scale * norm.weight
    shift = -mean * scale
    if norm.affine:
        shift = shift + norm.bias
    return (x * scale + shift).to(dtype), (pad * scale + shift).to(dtype)


def _norm_1d(norm, channels, eps, momentum):
    if norm == "BN":
        return nn.BatchNorm1d(channels, eps=eps, momentum=momentum)
    if norm == "naiveSyncBN":
        return NaiveSyncBatchNorm1d(channels, eps=eps, momentum=momentum)
    raise ValueError(f"MODEL.PILLAR_FEATURE_NET.NORM must be 'BN' or 'naiveSyncBN', got {norm!r}")


def _segment_max_forward(x, segment_ids, num_segments):
    index = segment_ids[:, None].expand(-1, x.shape[1])
    out = x.new_zeros(num_segments, x.shape[1])
    return out.scatter_reduce_(0, index, x, "amax", include_self=False)


class _SegmentMax(torch.autograd.Function):
    """Per-segment max over rows; the gradient flows to every row equal to its segment's max."""

    @staticmethod
    def forward(ctx, x, segment_ids, num_segments):
        out = _segment_max_forward(x, segment_ids, num_segments)
        ctx.save_for_backward(x, segment_ids, out)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, segment_ids, out = ctx.saved_tensors
        is_max = x == out.index_select(0, segment_ids)
        return grad_out.index_select(0, segment_ids) * is_max, None, None


def segment_max(x, segment_ids, num_segments):
    """
    Max of the rows of ``x`` that share a segment id.

    Args:
        x (Tensor): (P, C) float.
        segment_ids (Tensor): (P,) int64 in ``[0, num_segments)``.
        num_segments (int): number of output rows S.

    Returns:
        Tensor: (S, C); rows of empty segments are 0. The gradient of a segment's max goes to the
        row(s) holding it. With ties every tied row receives it; after a ReLU, ties occur at 0,
        where the ReLU passes no gradient anyway (unless points are exact duplicates).
    """
    if torch.is_grad_enabled() and x.requires_grad:
        return _SegmentMax.apply(x, segment_ids, num_segments)
    return _segment_max_forward(x, segment_ids, num_segments)


@PILLAR_ENCODER_REGISTRY.register()
class PillarFeatureNet(nn.Module):
    """
    Per-point decoration, Linear(no bias)-BN-ReLU layers and a max over each pillar's points.

    The decorated point has ``C + 3 + 3 (+1)`` channels: its raw features (``INPUT.POINT_FEATURES``,
    x, y, z first), its offset to the mean of its pillar's valid points, its offset to the pillar's
    geometric centre (z centre = middle of the range's z extent, as the reference's voxel centre)
    and, optionally, its distance to the sensor. With several layers, each layer but the last
    concatenates ``[point feature, pillar max]`` before the next (reference nuScenes: 10 -> 64,
    128 -> 64). Only the ``num_points`` first slots of each pillar are used: the layers run on the
    ``(sum(num_points), C')`` valid points and a scatter-max returns one row per pillar. In eval
    mode each BN is folded into its linear layer (same result, one pass fewer), and without
    autograd the points of a CPU forward are processed in blocks of ``inference_chunk`` (no
    (P, C') activation); on other devices (CUDA) the eval forward is one pass over all points
    (blocks would be hundreds of tiny kernel launches there).

    Under ``torch.autocast`` the layers run in the autocast dtype and so does the output (the BN
    statistics of training are float32); the decoration (offsets) stays float32.
    """

    # Points per block of the no-grad eval forward (``_inference_blocked``): 8192 x 64 float32
    # activations (2 MB) stay in cache; 8192 measured fastest on the CPU (4096: same, 16384:
    # +10%, 32768 and more: as slow as unblocked).
    inference_chunk = 8192
    # Device types whose no-grad eval forward uses the blocks (a CPU cache size); elsewhere
    # one pass.
    blocked_inference_devices = ("cpu",)

    @configurable
    def __init__(
        self,
        *,
        in_channels,
        feat_channels,
        voxel_size,
        point_cloud_range,
        with_cluster_center=True,
        with_voxel_center=True,
        with_distance=False,
        norm="BN",
        bn_eps=1e-3,
        bn_momentum=0.01,
        padded_slots=False,
    ):
        """
        Args:
            in_channels (int): C, channels of the input points (x, y, z first).
            feat_channels (list[int]): output widths of the layers.
            voxel_size (list[float]): [dx, dy, dz] (m).
            point_cloud_range (list[float]): [x_min, y_min, z_min, x_max, y_max, z_max] (m).
            with_cluster_center (bool): add xyz minus the pillar's point mean.
            with_voxel_center (bool): add xyz minus the pillar's geometric centre.
            with_distance (bool): add the point's Euclidean distance to the origin.
            norm (str): "BN" or "naiveSyncBN".
            bn_eps, bn_momentum (float): BN parameters (PyTorch momentum convention).
            padded_slots (bool): let the zero-padded slots of each pillar enter the BN
                statistics and the max, as the reference's ``HardVFE`` (see the module doc).
        """
        super().__init__()
        if in_channels < 3:
            raise ValueError(f"points need at least x, y, z (got {in_channels} channels)")
        if len(feat_channels) == 0:
            raise ValueError("MODEL.PILLAR_FEATURE_NET.FEAT_CHANNELS must not be empty")
        self.in_channels = in_channels
        self.with_cluster_center = with_cluster_center
        self.with_voxel_center = with_voxel_center
        self.with_distance = with_distance
        self.padded_slots = bool(padded_slots)
        grid_size_from_range(point_cloud_range, voxel_size)  # validates the two
        # voxel centre = coord * size + (range_min + size / 2), per (x, y, z)
        self.register_buffer(
            "voxel_size", torch.tensor(voxel_size, dtype=torch.float32), persistent=False
        )
        self.register_buffer(
            "center_offset",
            torch.tensor(point_cloud_range[:3], dtype=torch.float32) + self.voxel_size / 2,
            persistent=False,
        )

        c_in = in_channels + 3 * with_cluster_center + 3 * with_voxel_center + int(with_distance)
        self.decorated_channels = c_in
        self.linears = nn.ModuleList()
        self.norms = nn.ModuleList()
        for i, c_out in enumerate(feat_channels):
            # layers after the first see [point feature, pillar max]
            width = c_in if i == 0 else 2 * c_in
            self.linears.append(nn.Linear(width, c_out, bias=False))
            self.norms.append(_norm_1d(norm, c_out, bn_eps, bn_momentum))
            c_in = c_out
        self.out_channels = feat_channels[-1]

    @classmethod
    def from_config(cls, cfg):
        features = list(cfg.INPUT.POINT_FEATURES)
        if features[:3] != ["x", "y", "z"]:
            raise ValueError(
                f"INPUT.POINT_FEATURES must start with x, y, z (got {features}); "
                "the pillar net computes offsets from the first three columns"
            )
        pfn = cfg.MODEL.PILLAR_FEATURE_NET
        return {
            "in_channels": len(features),
            "feat_channels": list(pfn.FEAT_CHANNELS),
            "voxel_size": list(cfg.INPUT.VOXEL_SIZE),
            "point_cloud_range": list(cfg.INPUT.POINT_CLOUD_RANGE),
            "with_cluster_center": pfn.WITH_CLUSTER_CENTER,
            "with_voxel_center": pfn.WITH_VOXEL_CENTER,
            "with_distance": pfn.WITH_DISTANCE,
            "norm": pfn.NORM,
            "bn_eps": cfg.MODEL.BN_EPS,
            "bn_momentum": cfg.MODEL.BN_MOMENTUM,
            "padded_slots": pfn.PADDED_SLOTS,
        }

    def _folded_weights(self, linear, norm):
        """The linear weight (and bias); at inference the BN's affine map is folded into them."""
        if self.training:
            return linear.weight, None
        scale = norm.weight * torch.rsqrt(norm.running_var + norm.eps)
        return linear.weight * scale[:, None], norm.bias - norm.running_mean * scale

    def decorate(self, points, pillar_ids, num_points, coords):
        """
        Args:
            points (Tensor): (P, C) valid points of all pillars.
            pillar_ids (Tensor): (P,) int64 pillar of each point.
            num_points (Tensor): (V,) valid points per pillar (>= 1).
            coords (Tensor): (V, 4) (batch, z, y, x) pillar cells.

        Returns:
            Tensor: (P, decorated_channels).
        """
        return self._decorate(
            points, pillar_ids, self._pillar_refs(points, pillar_ids, num_points, coords)
        )

    def _pillar_refs(self, points, pillar_ids, num_points, coords):
        """The (V, 3) per-pillar points that xyz offsets are taken to: point mean, cell centre."""
        xyz = points[:, :3]
        refs = []
        if self.with_cluster_center:
            sums = xyz.new_zeros(num_points.shape[0], 3).index_add_(0, pillar_ids, xyz)
            refs.append(sums / num_points.clamp(min=1).to(sums.dtype)[:, None])
        if self.with_voxel_center:
            cells = coords[:, [3, 2, 1]].to(xyz.dtype)  # (x, y, z)
            refs.append(cells * self.voxel_size + self.center_offset)
        return refs

    def _decorate(self, points, pillar_ids, refs):
        xyz = points[:, :3]
        parts = [points] + [xyz - ref.index_select(0, pillar_ids) for ref in refs]
        if self.with_distance:
            parts.append(torch.linalg.vector_norm(xyz, dim=1, keepdim=True))
        return torch.cat(parts, dim=1)

    def forward(self, voxels, num_points, coords):
        """
        Args:
            voxels (Tensor): (V, M, C) float; slots ``>= num_points[v]`` are padding (any value;
                with ``padded_slots`` they count as zero rows, as the reference's zero padding).
            num_points (Tensor): (V,) int, points per pillar.
            coords (Tensor): (V, 4) int, (batch, z, y, x) cell of each pillar.

        Returns:
            Tensor: (V, out_channels) pillar features.
        """
        num_voxels, max_points, channels = voxels.shape
        if channels != self.in_channels:
            raise ValueError(
                f"voxels have {channels} channels but the pillar net was built for "
                f"{self.in_channels} (len(INPUT.POINT_FEATURES))"
            )
        num_points = num_points.long().clamp(max=max_points)
        slots = torch.arange(max_points, device=voxels.device)
        valid = slots[None, :] < num_points[:, None]
        pillar_ids, slot_ids = valid.nonzero(as_tuple=True)
        if pillar_ids.numel() == 0:
            return voxels.new_zeros(num_voxels, self.out_channels)
        points = voxels[pillar_ids, slot_ids]  # (P, C), the valid points only
        # Pillars with padded slots, and how many: one virtual zero row stands for all of them.
        pad_ids = pad_counts = None
        if self.padded_slots:
            pad_ids = (num_points < max_points).nonzero(as_tuple=True)[0]
            pad_counts = (max_points - num_points.index_select(0, pad_ids)).to(voxels.dtype)
        if (
            not self.training
            and not torch.is_grad_enabled()
            and points.device.type in self.blocked_inference_devices
        ):
            return self._inference_blocked(points, pillar_ids, num_points, coords, pad_ids)
        x = self.decorate(points, pillar_ids, num_points, coords)
        # the virtual padded rows: zero decorated features, as the reference masks them
        pad = None if pad_ids is None else x.new_zeros(pad_ids.shape[0], x.shape[1])

        pillar_max = None
        for linear, norm in zip(self.linears, self.norms):
            weight, bias = self._folded_weights(linear, norm)
            if pillar_max is None:
                x = F.linear(x, weight, bias)
                pad = None if pad is None else F.linear(pad, weight, bias)
            else:
                # linear([x, pillar_max[pillar_ids]]) without building the (P, 2C) concatenation
                c = x.shape[1]
                max_term = F.linear(pillar_max, weight[:, c:])
                x = F.linear(x, weight[:, :c], bias)
                x += max_term.index_select(0, pillar_ids)
                if pad is not None:
                    pad = F.linear(pad, weight[:, :c], bias) + max_term.index_select(0, pad_ids)
            if self.training:
                if pad is None:
                    x = norm(x)
                else:
                    x, pad = weighted_batch_norm(norm, x, pad, pad_counts, num_voxels * max_points)
            x = F.relu(x, inplace=True)
            if pad is None:
                pillar_max = segment_max(x, pillar_ids, num_voxels)
            else:
                pad = F.relu(pad)
                pillar_max = segment_max(
                    torch.cat([x, pad]), torch.cat([pillar_ids, pad_ids]), num_voxels
                )
        return pillar_max

    def _inference_blocked(self, points, pillar_ids, num_points, coords, pad_ids=None):
        """
        The eval-mode forward without autograd, over blocks of ``inference_chunk`` points.

        Same result as the one-pass forward (the same operations per point), but no
        ``(P, C')`` activation is ever materialised: each block's activations stay in cache
        and reuse the allocator's memory, instead of several fresh (P, 64) float32 buffers
        (50 MB each for a 10-sweep nuScenes frame) being page-faulted in on every call. This
        halves the pillar net's time on the CPU. Layer k needs the pillar max of layer k - 1,
        so pass k recomputes layers 1..k per block (layer 1, 10 -> 64, is cheap); the pillar
        max term of the concatenation is computed once per pillar. With ``pad_ids`` (pillars
        that have padded slots) the one virtual padded row of each such pillar joins the max.
        """
        num_voxels = num_points.shape[0]
        refs = self._pillar_refs(points, pillar_ids, num_points, coords)
        weights = [self._folded_weights(lin, norm) for lin, norm in zip(self.linears, self.norms)]
        chunk = max(1, int(self.inference_chunk))
        pillar_max, pillar_terms, pad = None, [], None
        for k, (weight, bias) in enumerate(weights):
            if k > 0:
                # linear([x, pillar_max[ids]]) = x @ W_x^T + (pillar_max @ W_max^T + b)[ids]
                c = weight.shape[1] // 2
                pillar_terms.append(F.linear(pillar_max, weight[:, c:], bias))
            out = None  # (V, C') in the dtype of the layers' output (autocast's, if enabled)
            for start in range(0, points.shape[0], chunk):
                ids = pillar_ids[start : start + chunk]
                x = self._decorate(points[start : start + chunk], ids, refs)
                for m in range(k + 1):
                    w, b = weights[m]
                    if m == 0:
                        x = F.linear(x, w, b)
                    else:
                        term = pillar_terms[m - 1].index_select(0, ids)
                        x = torch.addmm(term, x, w[:, : x.shape[1]].t())
                    x = F.relu(x, inplace=True)
                if out is None:
                    out = x.new_zeros(num_voxels, weight.shape[0])
                # ReLU outputs are >= 0, so the zero initial value never wins a non-empty max
                out.scatter_reduce_(0, ids[:, None].expand(-1, x.shape[1]), x, "amax")
            if pad_ids is not None and pad_ids.numel() > 0:
                # the padded row of layer k: zeros through layer 0, then [pad, pillar max]
                if k == 0:
                    pad = F.relu(bias).to(out.dtype).expand(pad_ids.shape[0], -1).contiguous()
                else:
                    term = pillar_terms[k - 1].index_select(0, pad_ids)
                    pad = F.relu(torch.addmm(term, pad, weight[:, : pad.shape[1]].t()))
                out.scatter_reduce_(0, pad_ids[:, None].expand(-1, pad.shape[1]), pad, "amax")
            pillar_max = out
        return pillar_max

    def forward_dense(self, voxels, num_points, coords):
        """
        Inference on the dense ``(V, M, C)`` voxel tensor, as the reference computes it.

        The same features as :meth:`forward` in eval mode (both padded-slot modes), written with
        dense per-pillar operations only (no data-dependent shapes besides V), for graph
        exporters (ONNX) and as an independent formulation for tests. Allocates ``(V, M, C')``.

        Args:
            voxels (Tensor): (V, M, C) float; slots ``>= num_points[v]`` are padding.
            num_points (Tensor): (V,) int, points per pillar (>= 1).
            coords (Tensor): (V, 4) int, (batch, z, y, x).

        Returns:
            Tensor: (V, out_channels).
        """
        if self.training:
            raise RuntimeError("forward_dense is inference only: call model.eval() first")
        max_points = voxels.shape[1]
        valid = torch.arange(max_points, device=voxels.device)[None, :] < num_points[:, None]
        valid = valid[:, :, None]  # (V, M, 1)
        mask = valid.to(voxels.dtype)
        voxels = torch.where(valid, voxels, torch.zeros_like(voxels))  # any padding value -> 0
        xyz = voxels[:, :, :3]
        parts = [voxels]
        if self.with_cluster_center:
            count = num_points.to(voxels.dtype).clamp(min=1)[:, None]
            mean = (xyz * mask).sum(dim=1) / count
            parts.append(xyz - mean[:, None, :])
        if self.with_voxel_center:
            cells = coords[:, [3, 2, 1]].to(voxels.dtype)
            parts.append(xyz - (cells * self.voxel_size + self.center_offset)[:, None, :])
        if self.with_distance:
            parts.append(torch.linalg.vector_norm(xyz, dim=2, keepdim=True))
        x = torch.cat(parts, dim=2) * mask  # padded slots are zero rows, as in the reference
        pillar_max = None
        for linear, norm in zip(self.linears, self.norms):
            weight, bias = self._folded_weights(linear, norm)
            if pillar_max is None:
                x = F.linear(x, weight, bias)
            else:
                c = x.shape[2]
                x = F.linear(x, weight[:, :c]) + F.linear(pillar_max, weight[:, c:], bias)[:, None]
            x = F.relu(x)
            if not self.padded_slots:
                x = x * mask  # ReLU outputs are >= 0: zero rows never win the max
            pillar_max = x.max(dim=1).values
        return pillar_max

    def forward_factored(self, voxels, num_points, coords):
        """
        :meth:`forward_dense` with the decoration's linear terms moved out of the per-point work:
        the graph exporters' formulation (inputs and output as :meth:`forward_dense`).

        The offsets are linear in the point: ``W [p, xyz - mean, xyz - centre] + b = W' p + t``
        with ``W'`` the raw-feature columns plus ``W_c + W_v`` on x, y, z and the per-pillar term
        ``t = b - W_c mean - W_v centre``. The first layer is one ``C -> C'`` linear per slot (no
        ``(V, M, C + 6)`` decoration); in the last layer ``t`` is added after the max over the
        slots (``max_m (W' p_m) + t``; ReLU is monotonic). Padded slots hold the pillar's first
        point, so a max over all slots is the valid points' max, without a mask pass; with
        ``padded_slots`` each layer's zero-row value (the reference's padded row: ``relu(b)``
        after the first layer) joins the max of the pillars that have a padded slot. Equal to
        :meth:`forward_dense` up to float rounding (``W' p`` and ``t`` are each of the scale of
        the coordinates: about 1e-6 of the features' scale on a frame of 50 m).
        """
        if self.training:
            raise RuntimeError("forward_factored is inference only: call model.eval() first")
        max_points = voxels.shape[1]
        valid = (torch.arange(max_points, device=voxels.device)[None, :] < num_points[:, None])[
            :, :, None
        ]
        points = torch.where(valid, voxels, voxels[:, :1])  # padded slots: the first point
        has_pad = (num_points < max_points)[:, None]
        num_layers = len(self.linears)
        x = pad = pillar_max = None
        for k, (linear, norm) in enumerate(zip(self.linears, self.norms)):
            weight, bias = self._folded_weights(linear, norm)
            if k == 0:
                x, term = self._factored_first_layer(points, valid, num_points, coords, weight)
                term = term + bias
                pad_pre = bias  # a zero row
            else:
                c = x.shape[2]
                term = F.linear(pillar_max, weight[:, c:], bias)
                x = F.linear(x, weight[:, :c])
                pad_pre = F.linear(pad, weight[:, :c]) + term
            if k == num_layers - 1:
                out = x.amax(dim=1) + term
                if self.padded_slots:
                    out = torch.where(has_pad, torch.maximum(out, pad_pre), out)
                return F.relu(out)
            x = F.relu(x + term[:, None])
            pillar_max = x.amax(dim=1)
            pad = F.relu(pad_pre)
            if self.padded_slots:
                pillar_max = torch.where(has_pad, torch.maximum(pillar_max, pad), pillar_max)

    def _factored_first_layer(self, points, valid, num_points, coords, weight):
        """``(W' p (V, M, C'), -W_c mean - W_v centre (V, C'))`` of :meth:`forward_factored`."""
        channels = points.shape[2]
        point_weight = [weight[:, :3], weight[:, 3:channels]]
        term = points.new_zeros(points.shape[0], weight.shape[0])
        column = channels
        if self.with_cluster_center:
            count = num_points.to(points.dtype).clamp(min=1)[:, None]
            xyz = torch.where(valid, points[:, :, :3], torch.zeros_like(points[:, :, :3]))
            w = weight[:, column : column + 3]
            point_weight[0] = point_weight[0] + w
            term = term - F.linear(xyz.sum(dim=1) / count, w)
            column += 3
        if self.with_voxel_center:
            cells = coords[:, [3, 2, 1]].to(points.dtype)
            w = weight[:, column : column + 3]
            point_weight[0] = point_weight[0] + w
            term = term - F.linear(cells * self.voxel_size + self.center_offset, w)
            column += 3
        if self.with_distance:
            distance = torch.linalg.vector_norm(points[:, :, :3], dim=2, keepdim=True)
            points = torch.cat([points, distance], dim=2)
            point_weight.append(weight[:, column : column + 1])
        return F.linear(points, torch.cat(point_weight, dim=1)), term
