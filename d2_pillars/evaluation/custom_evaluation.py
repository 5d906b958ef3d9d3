"""Evaluation on a user's own data (``evaluator_type == "custom"``): AP of rotated BEV and 3D
IoU per class at a strict and a loose IoU threshold, over 40 recall positions, overall and by
distance from the sensor, in the LiDAR frame (the protocol is :mod:`.custom_metrics`).

The ground truth is that of the registered split's records (``DatasetCatalog``): every box of
a labelled frame whose label is a class (``gt_labels >= 0``), not filtered by the model's
point-cloud range; unlabelled frames (``has_labels`` False) are not scored. Metrics go to
``<output_dir>/custom_metrics.json`` (written atomically) and to the log as detectron2 tables.
"""

import logging
import math
import numpy as np
import os
from collections import OrderedDict
from typing import Dict, List, Optional, Tuple
from tabulate import tabulate

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm
from detectron2.utils.logger import create_small_table

from .custom_metrics import RECALL_POSITIONS, class_iou_thresholds, evaluate_detections
from .examples import VIS_SUBDIR, lidar_frame_predictions, save_evaluation_examples
from .results_io import write_json

__all__ = ["CustomEvaluator", "custom_ground_truth", "CUSTOM_METRICS_FILE"]

logger = logging.getLogger(__name__)

#: File name of the metrics in the evaluator's output directory.
CUSTOM_METRICS_FILE = "custom_metrics.json"
_AP_KEYS = ("AP_3D", "AP_BEV", "AP_3D_loose", "AP_BEV_loose")


def frame_token(d: dict) -> str:
    """The frame id of a dataset record or a model input: ``sample_token`` (what the mapper
    passes on), else ``token``."""
    token = d.get("sample_token", d.get("token"))
    if token is None:
        raise KeyError(f"A frame has neither 'sample_token' nor 'token' (keys: {sorted(d)})")
    return str(token)


def custom_ground_truth(dataset_name: str) -> Tuple[Dict[str, dict], List[str]]:
    """The labelled frames of a registered own-data split and the ids of its unlabelled ones.

    Returns:
        ``({frame: {"boxes": (G, 7) float64, "labels": (G,) int64}}, [unlabelled frame, ...])``;
        labels index the split's ``thing_classes`` (-1: not a class).

    Raises:
        ValueError: a record whose ``gt_boxes`` is not (G, 7+) or whose ``gt_labels`` has another
            length, or a frame id seen twice.
    """
    records = DatasetCatalog.get(dataset_name)
    labelled: Dict[str, dict] = {}
    unlabelled: List[str] = []
    for record in records:
        token = frame_token(record)
        if token in labelled or token in unlabelled:
            raise ValueError(f"Dataset '{dataset_name}' holds frame {token!r} twice")
        if not record.get("has_labels", "gt_boxes" in record):
            unlabelled.append(token)
            continue
        boxes = np.asarray(record.get("gt_boxes", np.zeros((0, 7))), dtype=np.float64)
        if boxes.size == 0:
            boxes = boxes.reshape(0, 7)
        labels = np.asarray(record.get("gt_labels", np.zeros(0)), dtype=np.int64).reshape(-1)
        if boxes.ndim != 2 or boxes.shape[1] < 7 or len(labels) != len(boxes):
            raise ValueError(
                f"Dataset '{dataset_name}', frame {token!r}: gt_boxes {boxes.shape} and "
                f"gt_labels ({len(labels)},) must be (G, 7) x y z l w h yaw and (G,); rebuild "
                "its infos with `python tools/create_data.py custom --root ROOT`"
            )
        labelled[token] = {"boxes": boxes[:, :7], "labels": labels}
    return labelled, unlabelled


def _nan(value: Optional[float]) -> float:
    return math.nan if value is None else float(value)


def _mean(values) -> float:
    defined = [v for v in values if v is not None]
    return float(np.mean(defined)) if defined else math.nan


def flat_results(metrics: dict) -> "OrderedDict[str, float]":
    """The trainer's ``{metric: float}`` of :func:`.custom_metrics.evaluate_detections`'s
    result: ``mAP_3D``, ``mAP_BEV``, ``mAP_3D_loose``, ``mAP_BEV_loose``, then
    ``<class>/AP_3D`` ... ``<class>/AP_BEV_loose``; NaN where undefined (no ground truth)."""
    classes = metrics["classes"]
    out = OrderedDict(mAP_3D=_nan(metrics["mAP_3D"]), mAP_BEV=_nan(metrics["mAP_BEV"]))
    out["mAP_3D_loose"] = _mean(e["AP_3D_loose"] for e in classes.values())
    out["mAP_BEV_loose"] = _mean(e["AP_BEV_loose"] for e in classes.values())
    for name, entry in classes.items():
        for key in _AP_KEYS:
            out[f"{name}/{key}"] = _nan(entry[key])
    return out


def _table(rows, headers) -> str:
    """A pipe table as the other evaluators log; undefined APs (no ground truth) show "-"."""
    return tabulate(
        rows, headers=headers, tablefmt="pipe", floatfmt=".4f", numalign="left", missingval="-"
    )


def _log_tables(dataset_name: str, metrics: dict, summary: dict) -> None:
    classes = metrics["classes"]
    rows = [
        [name, e["num_gt"], e["iou"]]
        + [e[k] for k in ("AP_3D", "AP_BEV")]
        + [e["iou_loose"]]
        + [e[k] for k in ("AP_3D_loose", "AP_BEV_loose")]
        for name, e in classes.items()
    ]
    headers = ["class", "#gt", "IoU", "AP_3D", "AP_BEV", "IoU loose", "AP_3D loose", "AP_BEV loose"]
    table = _table(rows, headers)
    logger.info(
        f"Evaluation of '{dataset_name}' (AP over {metrics['recall_positions']} recall "
        f"positions, fractions):\n" + create_small_table(summary)
    )
    logger.info("Per-class AP (strict / loose IoU threshold):\n" + table)
    rows = [
        [name, bin_name, b["num_gt"]] + [b[k] for k in _AP_KEYS]
        for name, e in classes.items()
        for bin_name, b in e["by_distance"].items()
    ]
    headers = ["class", "range (m)", "#gt", "AP_3D", "AP_BEV", "AP_3D loose", "AP_BEV loose"]
    table = _table(rows, headers)
    logger.info("AP by distance from the sensor:\n" + table)


class CustomEvaluator(DatasetEvaluator):
    """Scores a model on a registered own-data split (metadata ``evaluator_type="custom"``).

    Metric (:mod:`.custom_metrics`): per class, AP over the 40 recall positions
    ``1/40 .. 40/40`` (KITTI's R40) of greedy score-ordered matching at rotated BEV IoU and at
    3D IoU, at the class's strict IoU threshold (``AP_3D``, ``AP_BEV``) and its loose one
    (``AP_3D_loose``, ``AP_BEV_loose``), over the whole split and in the distance bins 0-30,
    30-50 and 50+ m (BEV range of the box centre from the sensor). In a bin, ground truth
    outside it is ignored, and a prediction is binned by its own distance: matched to a box of
    the bin it is a TP, matched to an ignored box it does not count, unmatched it is a FP of its
    own bin only. The thresholds are the metadata's ``class_iou_thresholds``
    (``{class: [strict, loose]}``, from the dataset's ``dataset.yaml``), else
    :func:`.custom_metrics.default_iou_thresholds` (Car/Vehicle/Truck/Bus 0.7 and 0.5, other
    classes 0.5 and 0.25).

    ``mAP_3D`` and ``mAP_BEV`` average the **strict**-threshold APs over the classes that have
    ground truth in the split. A class (or a bin) without ground truth has no AP: ``null`` in the
    JSON, NaN in the returned dict, and it is left out of the mAPs.

    ``process`` takes the model inputs (``sample_token``, the mapper's key; ``token`` is read
    when it is absent) and outputs (``instances`` with ``pred_boxes3d: LiDARBoxes`` (K, 7|9) in
    the frame's LiDAR frame, ``scores`` (K,), ``pred_classes`` (K,) indexing ``thing_classes``).
    Predictions of unlabelled frames are dropped; every labelled frame must have been processed.
    ``evaluate`` returns, on the main rank, ``{"custom": {"mAP_3D", "mAP_BEV", "mAP_3D_loose",
    "mAP_BEV_loose", "<class>/AP_3D", ..., "<class>/AP_BEV_loose"}}`` (fractions), ``{}``
    elsewhere.

    Files in ``output_dir``: ``custom_metrics.json`` = ``{"classes": {<class>: {"iou",
    "AP_3D", "AP_BEV", "iou_loose", "AP_3D_loose", "AP_BEV_loose", "num_gt", "by_distance":
    {"0-30" | "30-50" | "50+": {"AP_3D", "AP_BEV", "AP_3D_loose", "AP_BEV_loose",
    "num_gt"}}}}, "mAP_3D", "mAP_BEV", "recall_positions": 40}`` and, with ``vis_num_samples``,
    BEV images of the worst and best frames in ``vis/``.
    """

    evaluator_type = "custom"

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
            dataset_name (str): a registered split with ``evaluator_type="custom"``,
                ``thing_classes`` and optionally ``class_iou_thresholds`` in its metadata.
            output_dir (str): where ``custom_metrics.json`` goes (the trainer's:
                ``OUTPUT_DIR/TEST.EVAL_OUTPUT_SUBDIR/<dataset>``); None writes nothing.
            distributed (bool): gather predictions from every rank (as COCOEvaluator).
            vis_num_samples (int): BEV images of this many worst and best frames
                (``TEST.VIS_NUM_SAMPLES``; 0: none; needs ``output_dir``).
            vis_score_thresh (float): predictions drawn in those images (``TEST.VIS_SCORE_THRESH``).
        """
        meta = MetadataCatalog.get(dataset_name)
        found = meta.get("evaluator_type", None)
        if found != self.evaluator_type:
            raise ValueError(
                f"Dataset '{dataset_name}' has evaluator_type {found!r}; CustomEvaluator scores "
                "own-data splits (evaluator_type 'custom': the splits that `python "
                "tools/create_data.py custom --root ROOT` writes and registers)."
            )
        class_names = meta.get("thing_classes", None)
        if not class_names:
            raise KeyError(f"Dataset '{dataset_name}' has no thing_classes in its metadata")
        if int(vis_num_samples) != vis_num_samples or vis_num_samples < 0:
            raise ValueError(
                f"vis_num_samples (TEST.VIS_NUM_SAMPLES) must be an integer >= 0, "
                f"got {vis_num_samples!r}"
            )
        self._dataset_name = dataset_name
        self._class_names = list(class_names)
        self._thresholds = class_iou_thresholds(
            self._class_names,
            meta.get("class_iou_thresholds", None),
            source=f"Dataset '{dataset_name}' (metadata class_iou_thresholds)",
        )
        self._output_dir = output_dir
        self._distributed = distributed
        self._vis_num_samples = int(vis_num_samples)
        self._vis_score_thresh = float(vis_score_thresh)
        self.reset()

    @property
    def iou_thresholds(self) -> Dict[str, Tuple[float, float]]:
        """``{class: (strict, loose)}`` used by this evaluator."""
        return dict(self._thresholds)

    def reset(self):
        self._predictions: List[Tuple[str, dict]] = []
        self._vis_predictions: List[Tuple[str, dict]] = []

    def process(self, inputs, outputs):
        for inp, out in zip(inputs, outputs):
            token = frame_token(inp)
            instances = out["instances"].to("cpu")
            boxes = instances.pred_boxes3d.tensor.detach().numpy().astype(np.float32)
            self._predictions.append(
                (
                    token,
                    {
                        "boxes": np.ascontiguousarray(boxes[:, :7]),
                        "scores": instances.scores.detach().numpy().astype(np.float32),
                        "labels": instances.pred_classes.detach().numpy().astype(np.int64),
                    },
                )
            )
            if self._vis_num_samples > 0 and self._output_dir is not None:
                self._vis_predictions.append(
                    (token, lidar_frame_predictions(instances, self._vis_score_thresh))
                )

    def _gather(self) -> Optional[Tuple[Dict[str, dict], Dict[str, dict]]]:
        """``({frame: predictions}, {frame: drawn predictions})`` of all ranks on the main rank,
        None on the others (a collective call). A frame seen twice (a padded sampler) keeps its
        first entry."""
        payload = (self._predictions, self._vis_predictions)
        if self._distributed and comm.get_world_size() > 1:
            comm.synchronize()
            per_rank = comm.gather(payload, dst=0)
            if not comm.is_main_process():
                return None
        else:
            per_rank = [payload]
        merged: Tuple[Dict[str, dict], Dict[str, dict]] = ({}, {})
        for payload in per_rank:
            for out, entries in zip(merged, payload):
                for token, entry in entries:
                    out.setdefault(token, entry)
        return merged

    def evaluate(self):
        """The metrics on the main rank (``{}`` on the others); writes the JSON and the images."""
        gathered = self._gather()
        if gathered is None:
            return {}
        predictions, vis_predictions = gathered
        ground_truth, unlabelled = custom_ground_truth(self._dataset_name)
        self._check_frames(predictions, ground_truth, unlabelled)
        skipped = sum(1 for t in predictions if t not in ground_truth)
        if skipped:
            logger.info(f"{skipped} unlabelled frames of '{self._dataset_name}' are not scored")
        metrics = evaluate_detections(
            ground_truth,
            predictions,
            self._class_names,
            self._thresholds,
            num_positions=RECALL_POSITIONS,
        )
        results = flat_results(metrics)
        if self._output_dir is not None:
            os.makedirs(self._output_dir, exist_ok=True)
            path = os.path.join(self._output_dir, CUSTOM_METRICS_FILE)
            write_json(path, metrics)
            logger.info(f"Metrics of {len(ground_truth)} labelled frames written to {path}")
        summary = {k: results[k] for k in ("mAP_3D", "mAP_BEV", "mAP_3D_loose", "mAP_BEV_loose")}
        _log_tables(self._dataset_name, metrics, summary)
        self._save_examples({t: v for t, v in vis_predictions.items() if t in ground_truth})
        return OrderedDict(custom=results)

    def _check_frames(self, predictions, ground_truth, unlabelled) -> None:
        known = set(ground_truth) | set(unlabelled)
        extra = sorted(set(predictions) - known)
        missing = sorted(set(ground_truth) - set(predictions))
        if not extra and not missing:
            return
        parts = []
        if missing:
            parts.append(
                f"{len(missing)} labelled frames were never processed (e.g. {missing[:3]})"
            )
        if extra:
            parts.append(f"{len(extra)} processed frames are not in the split (e.g. {extra[:3]})")
        raise ValueError(
            f"Predictions do not match dataset '{self._dataset_name}' ({len(known)} frames): "
            + "; ".join(parts)
            + ". Run the evaluator over the whole split (e.g. with the test loader of "
            "DATASETS.TEST), one process call per frame."
        )

    def _save_examples(self, vis_predictions: Dict[str, dict]) -> None:
        """BEV images of the worst and best labelled frames, ranked as the other evaluators do
        (best effort: a failure is a warning)."""
        if self._vis_num_samples <= 0 or self._output_dir is None or not vis_predictions:
            return
        out_dir = os.path.join(self._output_dir, VIS_SUBDIR)
        try:
            save_evaluation_examples(
                self._dataset_name,
                vis_predictions,
                out_dir,
                self._class_names,
                num_samples=self._vis_num_samples,
                score_thresh=self._vis_score_thresh,
                num_sweeps=0,
            )
        except Exception as e:  # images are a convenience: never lose the metrics for them
            logger.warning(
                f"Could not save the BEV example images of '{self._dataset_name}' to {out_dir} "
                f"({type(e).__name__}: {e}); the metrics are unaffected.",
                exc_info=True,
            )
