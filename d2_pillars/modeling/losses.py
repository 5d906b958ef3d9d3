# -*- coding: utf-8 -*-
"""Losses of the anchor head that fvcore has no cheap form for."""
import torch
from torch import Tensor
from torch.nn import functional as F

__all__ = ["sigmoid_focal_loss_sparse"]


def _focal_term(logits: Tensor, gamma: float) -> Tensor:
    """``sigmoid(x)^gamma * softplus(x)``: the focal loss of target 0 without alpha."""
    prob = torch.sigmoid(logits)
    weight = prob * prob if gamma == 2.0 else prob.pow(gamma)
    return weight * F.softplus(logits)


def sigmoid_focal_loss_sparse(
    logits: Tensor,
    weights: Tensor,
    pos_index: Tensor,
    pos_classes: Tensor,
    alpha: float = 0.25,
    gamma: float = 2.0,
) -> Tensor:
    """
    Summed sigmoid focal loss (:paper:`RetinaNet`) for one-hot targets given sparsely.

    Equals ``(fvcore.nn.sigmoid_focal_loss(logits, one_hot, alpha, gamma, "none") *
    weights[..., None]).sum()`` where ``one_hot[pos_index[i], pos_classes[i]] = 1``, but never
    builds the dense target tensor: every element is first scored as a negative
    (``(1 - alpha) * sigmoid(x)^gamma * softplus(x)``), then the few positive elements are
    corrected. This halves the elementwise passes over the (anchors x classes) logits, the
    largest tensor of a training step.

    Args:
        logits (Tensor): (N, C) class logits (N anchors of all samples, flattened).
        weights (Tensor): (N,) per-anchor weights (1 for used anchors, 0 for ignored ones).
        pos_index (Tensor): (P,) int64 rows of the positive anchors (weights 1 there).
        pos_classes (Tensor): (P,) int64 class of each positive anchor.
        alpha (float): weight of positives (negatives get ``1 - alpha``); < 0 disables it.
        gamma (float): focusing exponent.

    Returns:
        Tensor: scalar, the summed loss.
    """
    if alpha >= 0:
        w_pos, w_neg = alpha, 1.0 - alpha
    else:
        w_pos = w_neg = 1.0
    neg = (_focal_term(logits, gamma).sum(dim=1) * weights).sum() * w_neg
    pos_logits = logits[pos_index, pos_classes]
    # target 1: sigmoid(-x)^gamma * softplus(-x); remove the negative term counted above
    correction = w_pos * _focal_term(-pos_logits, gamma) - w_neg * _focal_term(pos_logits, gamma)
    return neg + correction.sum()
