"""What the nuScenes and Lyft evaluators share: collecting per-sample predictions in the global
frame on every rank, merging them on the main rank, and the BEV images of the worst and best
samples saved next to the metrics."""

import itertools
import logging
import math
import numpy as np
import os
from typing import Dict, List, Optional, Sequence, Tuple
import torch

from detectron2.data import MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm

from .examples import (
    VIS_SUBDIR,
    lidar_frame_predictions,
    merge_sample_entries,
    save_evaluation_examples,
)

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
    (subclasses implement :meth:`convert`); ``evaluate`` gathers them on the main rank and scores
    them there (subclasses implement :meth:`score`). Beyond those two methods and their own
    options, a dataset's evaluator differs only in data: the class attribute
    :attr:`evaluator_type`.

    With ``vis_num_samples > 0`` it also keeps each sample's LiDAR-frame predictions scored at
    least ``vis_score_thresh`` (boxes only), and after scoring ``evaluate`` calls
    :meth:`_save_examples`, which writes BEV images of the ``vis_num_samples`` worst and best
    samples to ``output_dir/vis/`` (:func:`.examples.save_evaluation_examples`).
    """

    #: The ``evaluator_type`` of the splits a subclass scores ("nuscenes", "lyft"): the registered
    #: metadata must carry it, and the error messages name ``register_<evaluator_type>``.
    evaluator_type: str = ""

    def __init__(
        self,
        dataset_name: str,
        output_dir: Optional[str] = None,
        *,
        distributed: bool = True,
        vis_num_samples: int = 0,
        vis_score_thresh: float = 0.3,
    ):
        """
        Args:
            dataset_name (str): a split registered with
                ``d2_pillars.data.register_<evaluator_type>``; its ``thing_classes`` name the
                ``pred_classes``.
            output_dir (str): where files go; None keeps nothing on disk.
            distributed (bool): gather predictions from every rank (as COCOEvaluator).
            vis_num_samples (int): after scoring, save BEV images (points, ground truth,
                predictions) of this many worst and this many best samples, ranked by a
                per-sample F1 (centre distance < 2 m, same class), to ``output_dir/vis/``
                (``TEST.VIS_NUM_SAMPLES``; 0: none). Needs ``output_dir``.
            vis_score_thresh (float): predictions scored below it are neither drawn nor counted
                in that F1 (``TEST.VIS_SCORE_THRESH``).
        """
        meta = dataset_metadata(dataset_name, self.evaluator_type)
        if int(vis_num_samples) != vis_num_samples or vis_num_samples < 0:
            raise ValueError(
                f"vis_num_samples (TEST.VIS_NUM_SAMPLES) must be an integer >= 0 (0: no images), "
                f"got {vis_num_samples!r}"
            )
        if not math.isfinite(float(vis_score_thresh)):
            raise ValueError(
                f"vis_score_thresh (TEST.VIS_SCORE_THRESH) must be finite, got {vis_score_thresh}"
            )
        self._dataset_name = dataset_name
        self._class_names = list(meta.thing_classes)
        self._distributed = distributed
        self._output_dir = output_dir
        self._vis_num_samples = int(vis_num_samples)
        self._vis_score_thresh = float(vis_score_thresh)
        self._predictions: List[SamplePredictions] = []
        self._vis_predictions: List[Tuple[str, dict]] = []
        self._gathered_vis: Dict[str, dict] = {}

    @property
    def _vis_enabled(self) -> bool:
        return self._vis_num_samples > 0 and self._output_dir is not None

    def reset(self):
        self._predictions = []
        self._vis_predictions = []
        self._gathered_vis = {}

    def convert(
        self, sample_token: str, instances, lidar2global: np.ndarray, ego2global: np.ndarray
    ):
        """Devkit box dicts (global frame) of one sample's ``Instances`` (each dataset's evaluator
        defines its devkit's box format)."""
        raise NotImplementedError(f"{type(self).__name__} must define convert()")

    def score(self, results: Dict[str, List[dict]], source: str) -> Dict[str, Dict[str, float]]:
        """Score the gathered ``{sample_token: [devkit box dict, ...]}`` of the whole split (main
        rank) with the dataset's devkit metric; ``source`` names where the results came from in
        error messages. Returns ``{evaluator_type: {metric: value}}``."""
        raise NotImplementedError(f"{type(self).__name__} must define score()")

    def process(self, inputs, outputs):
        for inp, out in zip(inputs, outputs):
            token = inp["sample_token"]
            lidar2ego = to_numpy_pose(inp["lidar2ego"], "lidar2ego")
            ego2global = to_numpy_pose(inp["ego2global"], "ego2global")
            instances = out["instances"].to("cpu")
            self._predictions.append(
                (token, self.convert(token, instances, ego2global @ lidar2ego, ego2global))
            )
            if self._vis_enabled:
                self._vis_predictions.append(
                    (token, lidar_frame_predictions(instances, self._vis_score_thresh))
                )

    def evaluate(self):
        """The metrics of :meth:`score` on the main rank (``{}`` on the others), then the example
        images (with ``vis_num_samples``)."""
        results = self._gathered_results()
        if results is None:
            return {}
        metrics = self.score(
            results, source=f"the {len(results)} samples processed by the evaluator"
        )
        self._save_examples()
        return metrics

    def _gathered_results(self) -> Optional[Dict[str, List[dict]]]:
        """``{token: boxes}`` over all ranks on the main rank; None on the others.

        A collective call: every rank must make it. The LiDAR-frame predictions kept for the
        example images travel in the same gather (into ``self._gathered_vis``).
        """
        payload = (self._predictions, self._vis_predictions)
        if self._distributed and comm.get_world_size() > 1:
            comm.synchronize()
            per_rank = comm.gather(payload, dst=0)
            if not comm.is_main_process():
                return None
        else:
            per_rank = [payload]
        self._gathered_vis = merge_sample_entries([vis for _, vis in per_rank])
        return merge_predictions([preds for preds, _ in per_rank])

    def _save_examples(self) -> List[dict]:
        """BEV images of the worst and best samples into ``output_dir/vis/`` (main rank, after
        :meth:`_gathered_results`). Never raises: a failure is logged as a warning."""
        if not self._vis_enabled or not self._gathered_vis:
            return []
        out_dir = os.path.join(self._output_dir, VIS_SUBDIR)
        try:
            return save_evaluation_examples(
                self._dataset_name,
                self._gathered_vis,
                out_dir,
                self._class_names,
                num_samples=self._vis_num_samples,
                score_thresh=self._vis_score_thresh,
            )
        except Exception as e:  # images are a convenience: never lose the metrics for them
            logger.warning(
                f"Could not save the BEV example images of '{self._dataset_name}' to {out_dir} "
                f"({type(e).__name__}: {e}); the metrics are unaffected.",
                exc_info=True,
            )
            return []
        finally:
            self._gathered_vis = {}

    def _labels_to_names(self, labels: np.ndarray) -> np.ndarray:
        if len(labels) and (labels.min() < 0 or labels.max() >= len(self._class_names)):
            raise ValueError(
                f"pred_classes out of range [0, {len(self._class_names)}) of the thing_classes "
                f"of '{self._dataset_name}': {sorted(set(labels.tolist()))}"
            )
        return np.asarray(self._class_names, dtype=object)[labels]
