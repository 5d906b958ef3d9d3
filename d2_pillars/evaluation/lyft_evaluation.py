"""Lyft Level 5 evaluation: the challenge mAP over IoU 0.5:0.05:0.95 and the Kaggle CSV.

Predictions (keyframe LiDAR frame) go LiDAR -> ego -> global with no filter. Ground truth is the
SDK's ``sample_annotation`` of every sample of the registered split, in the global frame,
unfiltered. The metric is the SDK's (``lyft_dataset_sdk.eval.detection.mAP_evaluation``), computed
either by the SDK itself or by the equal vectorised path of :mod:`.lyft_map` (``method``).
"""

import logging
import numpy as np
import os
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence
from tabulate import tabulate

from detectron2.data import DatasetCatalog
from detectron2.utils import comm

from .common import GlobalFrameEvaluator, dataset_metadata
from .lyft_map import LYFT_IOU_THRESHOLDS, lyft_map
from .results_io import (
    ResultsFileError,
    check_sample_tokens,
    load_lyft_results,
    write_json,
    write_lyft_csv,
    write_lyft_results,
)

__all__ = [
    "LyftEvaluator",
    "evaluate_lyft_results",
    "lyft_ground_truth",
    "LYFT_RESULTS_JSON",
    "LYFT_RESULTS_CSV",
]

logger = logging.getLogger(__name__)

LYFT_RESULTS_JSON = "results_lyft.json"
LYFT_RESULTS_CSV = "results_lyft.csv"
_KAGGLE_SAMPLE_SUBMISSION = "sample_submission.csv"


def lyft_ground_truth(lyft, sample_tokens: Sequence[str]) -> List[dict]:
    """Every ``sample_annotation`` of the samples, as SDK box dicts (global frame, unfiltered).

    Args:
        lyft: a ``LyftDataset``.
        sample_tokens: the split's samples.
    """
    gt = []
    for token in sample_tokens:
        for ann_token in lyft.get("sample", token)["anns"]:
            ann = lyft.get("sample_annotation", ann_token)
            gt.append(
                {
                    "sample_token": token,
                    "translation": list(ann["translation"]),
                    "size": list(ann["size"]),
                    "rotation": list(ann["rotation"]),
                    "name": ann["category_name"],
                }
            )
    return gt


def _split_sample_tokens(dataset_name: str) -> List[str]:
    return [d["sample_token"] for d in DatasetCatalog.get(dataset_name)]


def _submission_ids(root: str, tokens: Sequence[str]) -> List[str]:
    """Row order of the Kaggle CSV: ``sample_submission.csv`` of the dataset root when it lists
    every sample (the test split), else the split's order."""
    path = os.path.join(root, _KAGGLE_SAMPLE_SUBMISSION)
    if not os.path.isfile(path):
        return list(tokens)
    with open(path) as f:
        ids = [line.split(",", 1)[0].strip() for line in f.read().splitlines()[1:] if line]
    if set(tokens) <= set(ids):
        return ids
    return list(tokens)


def _log_table(result: dict) -> None:
    thresholds = result["iou_thresholds"]
    rows = [
        [name, result["class_ap"][c]] + list(result["ap"][c])
        for c, name in enumerate(result["class_names"])
    ]
    rows.append(["mean", result["mAP"]] + list(result["mAP_per_threshold"]))
    headers = ["class", "AP"] + [f"@{t:.2f}" for t in thresholds]
    table = tabulate(rows, headers=headers, tablefmt="pipe", floatfmt=".4f", numalign="left")
    logger.info("Lyft per-class AP (IoU 0.5:0.95):\n" + table)


def _score_lyft(
    results: Dict[str, List[dict]],
    dataset_name: str,
    output_dir: Optional[str],
    *,
    source: str,
    write_files: bool,
    method: str,
) -> Dict[str, Dict[str, float]]:
    from d2_pillars.data.datasets.lyft import open_lyft

    metadata = dataset_metadata(dataset_name, "lyft")
    tokens = _split_sample_tokens(dataset_name)
    check_sample_tokens(
        results,
        tokens,
        source=source,
        split=f"dataset '{dataset_name}' (Lyft {metadata.version} split '{metadata.eval_split}')",
    )
    predictions = [box for token in tokens for box in results[token]]
    unknown = sorted(map(str, {box["name"] for box in predictions} - set(metadata.thing_classes)))
    if unknown:
        raise ResultsFileError(
            f"Results from {source}: unknown class names {unknown}; the classes of "
            f"'{dataset_name}' are {list(metadata.thing_classes)}. Map your classes to these "
            "names before scoring."
        )
    if write_files and output_dir is not None:
        json_path = os.path.join(output_dir, LYFT_RESULTS_JSON)
        csv_path = os.path.join(output_dir, LYFT_RESULTS_CSV)
        ordered = {t: results[t] for t in tokens}
        write_lyft_results(json_path, ordered)
        write_lyft_csv(csv_path, ordered, _submission_ids(metadata.dataset_root, tokens))
        logger.info(f"Lyft results of {len(results)} samples written to {json_path}, {csv_path}")

    lyft = open_lyft(metadata.dataset_root, metadata.version, verbose=False)
    gt = lyft_ground_truth(lyft, tokens)
    if not gt:
        logger.warning(
            f"'{dataset_name}' (Lyft {metadata.version} split '{metadata.eval_split}') has no "
            "annotation (a test split?): nothing is scored; submit the CSV to Kaggle."
        )
        return {}
    gt_names = {box["name"] for box in gt}
    ignored = sorted({box["name"] for box in predictions} - gt_names)
    if ignored:
        logger.warning(
            f"Predicted classes {ignored} have no ground truth box in the split; the SDK's "
            "metric ignores them"
        )
    result = lyft_map(gt, predictions, LYFT_IOU_THRESHOLDS, method=method)
    _log_table(result)
    if output_dir is not None:
        write_json(
            os.path.join(output_dir, "lyft_metrics.json"),
            {
                "mAP": result["mAP"],
                "class_names": result["class_names"],
                "iou_thresholds": result["iou_thresholds"],
                "ap": np.asarray(result["ap"]).tolist(),
                "method": method,
                "source": source,
            },
        )
    out = OrderedDict(mAP=result["mAP"])
    for c, name in enumerate(result["class_names"]):
        out[f"AP-{name}"] = float(result["class_ap"][c])
    for t, ap in zip(result["iou_thresholds"], result["mAP_per_threshold"]):
        out[f"mAP@{t:.2f}"] = float(ap)
    return {"lyft": out}


class LyftEvaluator(GlobalFrameEvaluator):
    """Scores a model on a registered Lyft split: the challenge mAP (IoU 0.5:0.05:0.95).

    ``process`` takes the model inputs (``sample_token``, ``lidar2ego``, ``ego2global``) and
    outputs (``instances`` with ``pred_boxes3d: LiDARBoxes``, ``scores``, ``pred_classes``).
    ``evaluate`` returns ``{"lyft": {"mAP", "AP-<class>", "mAP@0.50", ...}}`` (classes of the
    ground truth, fractions) on the main rank and ``{}`` elsewhere.

    Files in ``output_dir``: ``results_lyft.json`` (SDK box dicts), ``results_lyft.csv`` (the
    Kaggle submission), ``lyft_metrics.json`` (AP per class and threshold) and, with
    ``vis_num_samples``, BEV images of the worst and best samples in ``vis/``.
    """

    evaluator_type = "lyft"

    def __init__(
        self, dataset_name: str, output_dir: Optional[str] = None, *, method: str = "auto", **kwargs
    ):
        """
        Args:
            dataset_name (str): a split registered with ``d2_pillars.data.register_lyft``.
            output_dir (str): where files go; None keeps nothing on disk.
            method (str): "sdk" (the SDK's shapely loops), "fast" (vectorised, equal numbers) or
                "auto" (the SDK up to 1000 predictions, else fast).
            kwargs: ``distributed``, ``vis_num_samples``, ``vis_score_thresh`` of
                :class:`GlobalFrameEvaluator`.
        """
        if method not in ("auto", "sdk", "fast"):
            raise ValueError(f"Lyft mAP method must be 'auto', 'sdk' or 'fast'; got {method!r}")
        super().__init__(dataset_name, output_dir, **kwargs)
        self._method = method

    def convert(self, sample_token, instances, lidar2global, ego2global) -> List[dict]:
        """The sample's boxes as SDK box dicts in the global frame (centre z, [w, l, h])."""
        labels = instances.pred_classes.numpy().astype(np.int64)
        scores = instances.scores.numpy().astype(np.float64).tolist()
        names = self._labels_to_names(labels).tolist()
        rec = instances.pred_boxes3d.to_global_records(lidar2global)
        translation = rec["translation"].tolist()
        size = rec["size"].tolist()
        rotation = rec["rotation"].tolist()
        return [
            {
                "sample_token": sample_token,
                "translation": translation[i],
                "size": size[i],
                "rotation": rotation[i],
                "name": names[i],
                "score": scores[i],
            }
            for i in range(len(scores))
        ]

    def score(self, results, source):
        """The challenge mAP of ``results``; also writes the results JSON, the Kaggle CSV and the
        per-threshold table to ``output_dir``."""
        return _score_lyft(
            results,
            self._dataset_name,
            self._output_dir,
            source=source,
            write_files=True,
            method=self._method,
        )


def evaluate_lyft_results(
    results_file: str,
    dataset_name: str,
    output_dir: Optional[str] = None,
    *,
    method: str = "auto",
) -> Dict[str, Dict[str, float]]:
    """Score an existing Lyft results file (JSON or Kaggle CSV) on a registered split.

    Returns:
        dict: ``{"lyft": {...}}`` as :class:`LyftEvaluator` (``{}`` off the main rank and on a
        split without annotations).
    """
    if not comm.is_main_process():
        return {}
    results = load_lyft_results(results_file)
    if output_dir is not None:
        os.makedirs(output_dir, exist_ok=True)
    try:
        return _score_lyft(
            results,
            dataset_name,
            output_dir,
            source=f"file {results_file}",
            write_files=False,
            method=method,
        )
    except AssertionError as e:  # Box3D's checks, e.g. a size <= 0
        raise ResultsFileError(f"{results_file}: invalid box: {e}") from e
