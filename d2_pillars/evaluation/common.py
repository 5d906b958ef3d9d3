"""What the nuScenes and Lyft evaluators share: collecting per-sample predictions in the global
frame on every rank, and merging them on the main rank."""

import numpy as np
import torch

from detectron2.data import MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm

import itertools
import logging
from typing import Dict, List, Optional, Sequence, Tuple

__all__ = ["GlobalFrameEvaluator", "merge_predictions", "to_numpy_pose", "dataset_metadata"]

logger = logging.getLogger(__name__)

# One sample's converted boxes: (sample_token, [box dict, ...]).
SamplePredictions = Tuple[str, List[dict]]


def to_numpy_pose(matrix, name: str = "pose") -> np.ndarray:
    """A (4, 4) float64 numpy array from a tensor / array / nested list."""
    if isinstance(matrix, torch.Tensor):
        matrix = matrix.detach().cpu().double().numpy()
    out = np.asarray(matrix, dtype=np.float64)
    if out.shape != (4, 4):
        raise ValueError(f"'{name}' must be a 4x4 matrix, got shape {out.shape}")
    return out


def dataset_metadata(dataset_name: str, evaluator_type: str):
    """The registered split's metadata, checked for what the evaluators read."""
    meta = MetadataCatalog.get(dataset_name)
    missing = [
        k
        for k in ("thing_classes", "dataset_root", "version", "eval_split")
        if meta.get(k, None) is None
    ]
    if missing:
        raise KeyError(
            f"Dataset '{dataset_name}' has no metadata {missing}: register it with "
            f"d2_pillars.data.register_{evaluator_type}(name, info_path, root)."
        )
    found = meta.get("evaluator_type", evaluator_type)
    if found != evaluator_type:
        raise ValueError(
            f"Dataset '{dataset_name}' has evaluator_type {found!r}; it cannot be scored by the "
            f"{evaluator_type} evaluator."
        )
    return meta


def merge_predictions(per_rank: Sequence[Sequence[SamplePredictions]]) -> Dict[str, List[dict]]:
    """Merge the per-sample predictions gathered from every rank into ``{token: boxes}``.

    Args:
        per_rank: one list of ``(sample_token, boxes)`` per rank (``comm.gather``'s output).

    A sample seen twice (a sampler that pads the last batch) keeps its first entry, with a
    warning if the two entries differ.
    """
    merged: Dict[str, List[dict]] = {}
    conflicts = 0
    for token, boxes in itertools.chain.from_iterable(per_rank):
        if token in merged:
            conflicts += merged[token] != boxes
            continue
        merged[token] = boxes
    if conflicts:
        logger.warning(
            f"{conflicts} samples were predicted twice with different boxes; kept the first"
        )
    return merged


class GlobalFrameEvaluator(DatasetEvaluator):
    """Base of the devkit evaluators: ``process`` converts each sample's ``Instances``
    (``pred_boxes3d: LiDARBoxes`` in the keyframe LiDAR frame, ``scores``, ``pred_classes``)
    with the input's ``lidar2ego`` and ``ego2global`` into devkit box dicts in the global frame
    (subclasses implement :meth:`convert`); ``evaluate`` gathers them on the main rank.
    """

    def __init__(self, dataset_name: str, class_names: Sequence[str], distributed: bool = True):
        self._dataset_name = dataset_name
        self._class_names = list(class_names)
        self._distributed = distributed
        self._predictions: List[SamplePredictions] = []

    def reset(self):
        self._predictions = []

    def convert(
        self, sample_token: str, instances, lidar2global: np.ndarray, ego2global: np.ndarray
    ):
        """Devkit box dicts (global frame) of one sample's ``Instances``."""
        raise NotImplementedError

    def process(self, inputs, outputs):
        for inp, out in zip(inputs, outputs):
            token = inp["sample_token"]
            lidar2ego = to_numpy_pose(inp["lidar2ego"], "lidar2ego")
            ego2global = to_numpy_pose(inp["ego2global"], "ego2global")
            instances = out["instances"].to("cpu")
            self._predictions.append(
                (token, self.convert(token, instances, ego2global @ lidar2ego, ego2global))
            )

    def _gathered_results(self) -> Optional[Dict[str, List[dict]]]:
        """``{token: boxes}`` over all ranks on the main rank; None on the others."""
        if self._distributed and comm.get_world_size() > 1:
            comm.synchronize()
            per_rank = comm.gather(self._predictions, dst=0)
            if not comm.is_main_process():
                return None
        else:
            per_rank = [self._predictions]
        return merge_predictions(per_rank)

    def _labels_to_names(self, labels: np.ndarray) -> np.ndarray:
        if len(labels) and (labels.min() < 0 or labels.max() >= len(self._class_names)):
            raise ValueError(
                f"pred_classes out of range [0, {len(self._class_names)}) of the thing_classes "
                f"of '{self._dataset_name}': {sorted(set(labels.tolist()))}"
            )
        return np.asarray(self._class_names, dtype=object)[labels]
