"""Read what the renderers are given: arrays or tensors of points, boxes, labels and scores become
numpy arrays and :class:`LiDARBoxes`, with one clear error when the counts disagree."""

import numpy as np
import torch

from d2_pillars.structures import LiDARBoxes

__all__ = ["as_numpy", "to_boxes", "box_labels", "box_scores"]


def as_numpy(x) -> np.ndarray:
    """A numpy array of an array, a tensor (detached, on the CPU) or a list."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def to_boxes(boxes) -> LiDARBoxes:
    """``LiDARBoxes`` of ``LiDARBoxes``, a (K, 7|9) array / tensor, or None (no boxes)."""
    if boxes is None:
        return LiDARBoxes(torch.zeros(0, 7))
    if isinstance(boxes, LiDARBoxes):
        return boxes
    return LiDARBoxes(torch.as_tensor(as_numpy(boxes), dtype=torch.float32))


def _per_box(values, n: int, name: str, dtype, default) -> np.ndarray:
    """(n,) ``dtype`` array of one ``name`` value per box, from an array / tensor / list; None:
    all ``default``. Raises ValueError when the count is not ``n``."""
    if values is None:
        return np.full(n, default, dtype)
    values = as_numpy(values).astype(dtype).reshape(-1)
    if values.shape[0] != n:
        raise ValueError(f"{n} boxes but {values.shape[0]} {name}")
    return values


def box_labels(labels, n: int) -> np.ndarray:
    """(n,) int64 class indices; None: all 0."""
    return _per_box(labels, n, "labels", np.int64, 0)


def box_scores(scores, n: int) -> np.ndarray:
    """(n,) float64 scores; None: all 1.0 (boxes without scores count as certain)."""
    return _per_box(scores, n, "scores", np.float64, 1.0)
