"""Batch norms synchronised across processes without SyncBatchNorm's CUDA requirement.

Single-process runs keep plain BatchNorm (users of the peers lose runs to SyncBN defaults that
crash on one GPU); with several processes the trainer converts every BatchNorm into detectron2's
``NaiveSyncBatchNorm`` (2D) or the pillar encoder's ``NaiveSyncBatchNorm1d`` ((N, C) input), whose
statistics are all-reduced differentiably.
"""

from torch import nn

from detectron2.layers import NaiveSyncBatchNorm

from ..modeling.pillar_encoder import NaiveSyncBatchNorm1d

__all__ = ["convert_to_naive_sync_bn"]


def _copy_bn(src: nn.modules.batchnorm._BatchNorm, dst_cls):
    dst = dst_cls(src.num_features, eps=src.eps, momentum=src.momentum, affine=src.affine)
    dst.load_state_dict(src.state_dict())
    return dst.to(src.running_mean.device)


def convert_to_naive_sync_bn(module: nn.Module) -> nn.Module:
    """Replace every plain ``BatchNorm1d``/``BatchNorm2d`` in ``module`` (recursively) by its naive
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
