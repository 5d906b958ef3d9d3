"""Batch norms synchronised across processes without SyncBatchNorm's CUDA requirement.

Single-process runs keep plain BatchNorm (users of the peers lose runs to SyncBN defaults that
crash on one GPU); with several processes the trainer converts every BatchNorm into detectron2's
``NaiveSyncBatchNorm`` (2D) or :class:`NaiveSyncBatchNorm1d` (the pillar encoder's (N, C) input).
"""

import torch
import torch.distributed as dist
from torch import nn

from detectron2.layers import NaiveSyncBatchNorm
from detectron2.utils import comm

__all__ = ["NaiveSyncBatchNorm1d", "convert_to_naive_sync_bn"]


class NaiveSyncBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm1d over (N, C) inputs whose batch statistics are averaged over all processes.

    Each process contributes its mean and E[x^2] with equal weight (like detectron2's 2D
    ``NaiveSyncBatchNorm`` with its default stats mode), so per-process batches should be of
    similar size. An empty local batch contributes zeros but still joins the all-reduce.
    """

    def forward(self, input):
        if comm.get_world_size() == 1 or not self.training:
            return super().forward(input)
        if input.dim() != 2:
            raise ValueError(f"NaiveSyncBatchNorm1d expects (N, C) input, got {tuple(input.shape)}")
        channels = input.shape[1]
        if input.shape[0] > 0:
            mean = input.mean(dim=0)
            meansqr = (input * input).mean(dim=0)
            count = input.new_ones(1)
        else:
            mean = meansqr = input.new_zeros(channels)
            count = input.new_zeros(1)
        stats = torch.cat([mean, meansqr, count])
        dist.all_reduce(stats)
        total = stats[-1].clamp(min=1)
        mean, meansqr = stats[:channels] / total, stats[channels : 2 * channels] / total
        var = meansqr - mean * mean
        self.running_mean += self.momentum * (mean.detach() - self.running_mean)
        self.running_var += self.momentum * (var.detach() - self.running_var)
        invstd = torch.rsqrt(var + self.eps)
        scale = self.weight * invstd
        bias = self.bias - mean * scale
        return input * scale + bias


def _copy_bn(src: nn.modules.batchnorm._BatchNorm, dst_cls):
    dst = dst_cls(src.num_features, eps=src.eps, momentum=src.momentum, affine=src.affine)
    dst.load_state_dict(src.state_dict())
    return dst.to(next(iter(src.state_dict().values())).device)


def convert_to_naive_sync_bn(module: nn.Module) -> nn.Module:
    """Replace every ``BatchNorm1d``/``BatchNorm2d`` in ``module`` (recursively) by its naive
    synchronised counterpart, keeping parameters and running statistics. Returns the module."""
    if type(module) is nn.BatchNorm2d:
        return _copy_bn(module, NaiveSyncBatchNorm)
    if type(module) is nn.BatchNorm1d:
        return _copy_bn(module, NaiveSyncBatchNorm1d)
    for name, child in module.named_children():
        new = convert_to_naive_sync_bn(child)
        if new is not child:
            setattr(module, name, new)
    return module
