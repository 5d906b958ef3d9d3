"""nuScenes detection evaluation with the official devkit (``DetectionEval``,
``detection_cvpr_2019``).

Predictions (keyframe LiDAR frame) go LiDAR -> ego -> global (velocity rotated, never
translated); boxes at or beyond the class range from the ego pose are dropped, at most 500 per
sample are kept (highest scores), each gets the default attribute of its class for its speed, and
the official results JSON is written atomically. The devkit then scores it on the registered
split; its summary (``metrics_summary.json``, ``metrics_details.json``) and, optionally, its
plots are saved next to the results.
"""

import contextlib
import logging
import numpy as np
import os
import shutil
import tempfile
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence
from tabulate import tabulate

from detectron2.utils import comm

from .common import GlobalFrameEvaluator, dataset_metadata
from .results_io import (
    NUSCENES_META,
    ResultsFileError,
    check_sample_tokens,
    load_nuscenes_results,
    write_json,
    write_nuscenes_results,
)

__all__ = [
    "NuScenesEvaluator",
    "evaluate_nuscenes_results",
    "NUSCENES_EVAL_CONFIG",
    "NUSCENES_DEFAULT_ATTRIBUTES",
    "NUSCENES_RESULTS_FILE",
    "nuscenes_split_sample_tokens",
]

logger = logging.getLogger(__name__)

#: The devkit configuration of the detection challenge.
NUSCENES_EVAL_CONFIG = "detection_cvpr_2019"
#: File name of the results JSON in the evaluator's output directory.
NUSCENES_RESULTS_FILE = "results_nusc.json"
#: Speed (m/s, global frame) above which a box gets its class's "moving" attribute.
SPEED_THRESHOLD = 0.2
#: class -> (attribute when speed > 0.2 m/s, attribute otherwise).
NUSCENES_DEFAULT_ATTRIBUTES = {
    "car": ("vehicle.moving", "vehicle.parked"),
    "truck": ("vehicle.moving", "vehicle.parked"),
    "trailer": ("vehicle.moving", "vehicle.parked"),
    "construction_vehicle": ("vehicle.moving", "vehicle.parked"),
    "bus": ("vehicle.moving", "vehicle.stopped"),
    "bicycle": ("cycle.with_rider", "cycle.without_rider"),
    "motorcycle": ("cycle.with_rider", "cycle.without_rider"),
    "pedestrian": ("pedestrian.moving", "pedestrian.standing"),
    "traffic_cone": ("", ""),
    "barrier": ("", ""),
}
_TP_METRICS = (
    ("trans_err", "mATE"),
    ("scale_err", "mASE"),
    ("orient_err", "mAOE"),
    ("vel_err", "mAVE"),
    ("attr_err", "mAAE"),
)


def _eval_config():
    from nuscenes.eval.common.config import config_factory

    return config_factory(NUSCENES_EVAL_CONFIG)


def nuscenes_split_sample_tokens(nusc, eval_split: str) -> List[str]:
    """Sample tokens of the devkit split ``eval_split`` (predefined or custom ``splits.json``),
    in database order: exactly the tokens ``DetectionEval`` requires in a results file."""
    from nuscenes.eval.common.loaders import get_samples_of_custom_split
    from nuscenes.utils.splits import create_splits_scenes, is_predefined_split

    if not is_predefined_split(split_name=eval_split):
        return list(get_samples_of_custom_split(split_name=eval_split, nusc=nusc))
    scenes = set(create_splits_scenes()[eval_split])
    scene_names = {s["token"]: s["name"] for s in nusc.scene}
    return [s["token"] for s in nusc.sample if scene_names[s["scene_token"]] in scenes]


def _check_version(version: str, eval_split: str, dataset_name: str) -> None:
    need = {"mini_train": "mini", "mini_val": "mini", "test": "test"}.get(eval_split)
    if need is None and eval_split in ("train", "val", "train_detect", "train_track"):
        need = "trainval"
    if need is not None and not version.endswith(need):
        raise ValueError(
            f"Dataset '{dataset_name}': the nuScenes split '{eval_split}' needs a version ending "
            f"in '{need}', but the dataset is registered with version '{version}'"
        )


def _zero_metrics(class_names: Sequence[str]) -> Dict[str, float]:
    """The metrics of a submission without a single box: no AP, every TP error at its cap 1."""
    out = {"mAP": 0.0, "NDS": 0.0}
    out.update({short: 1.0 for _, short in _TP_METRICS})
    out.update({f"AP-{c}": 0.0 for c in class_names})
    return out


def _log_table(summary: dict) -> None:
    rows = []
    for name, ap in summary["mean_dist_aps"].items():
        errs = summary["label_tp_errors"][name]
        rows.append([name, ap] + [errs[k] for k, _ in _TP_METRICS])
    headers = ["class", "AP"] + [short[1:] for _, short in _TP_METRICS]
    table = tabulate(rows, headers=headers, tablefmt="pipe", floatfmt=".4f", numalign="left")
    logger.info("nuScenes per-class results:\n" + table)
    logger.info(
        "nuScenes: mAP {:.4f}  NDS {:.4f}  ".format(summary["mean_ap"], summary["nd_score"])
        + "  ".join(f"{short} {summary['tp_errors'][k]:.4f}" for k, short in _TP_METRICS)
    )


@contextlib.contextmanager
def _output_folder(output_dir: Optional[str]):
    """``output_dir`` (created), or a temporary folder removed afterwards when it is None."""
    if output_dir is not None:
        os.makedirs(output_dir, exist_ok=True)
        yield output_dir
    else:
        with tempfile.TemporaryDirectory(prefix="nusc_eval_") as tmp:
            yield tmp


def _score_nuscenes(
    results: Dict[str, List[dict]],
    dataset_name: str,
    output_dir: Optional[str],
    *,
    source: str,
    results_path: Optional[str] = None,
    meta: Optional[dict] = None,
    plot: bool = False,
) -> Dict[str, Dict[str, float]]:
    """Check ``results`` against the split, write them (unless ``results_path`` holds them
    already), run ``DetectionEval`` and return ``{"nuscenes": metrics}`` (``{}`` on a test
    split, which has no annotations)."""
    from d2_pillars.data.datasets.nuscenes import open_nuscenes

    metadata = dataset_metadata(dataset_name, "nuscenes")
    version, split, root = metadata.version, metadata.eval_split, metadata.dataset_root
    class_names = list(_eval_config().class_names)
    _check_version(version, split, dataset_name)
    max_boxes = _eval_config().max_boxes_per_sample
    crowded = [t for t, boxes in results.items() if len(boxes) > max_boxes]
    if crowded:
        raise ResultsFileError(
            f"Results from {source}: {len(crowded)} samples hold more than {max_boxes} boxes "
            f"(e.g. {crowded[0]}: {len(results[crowded[0]])}); the devkit allows {max_boxes}"
        )

    nusc = open_nuscenes(root, version, verbose=False)
    expected = nuscenes_split_sample_tokens(nusc, split)
    check_sample_tokens(
        results,
        expected,
        source=source,
        split=f"dataset '{dataset_name}' (nuScenes {version} split '{split}')",
    )
    with _output_folder(output_dir) as out_dir:
        if results_path is None:
            results_path = os.path.join(out_dir, NUSCENES_RESULTS_FILE)
            write_nuscenes_results(results_path, results, meta or NUSCENES_META)
            logger.info(f"nuScenes results of {len(results)} samples written to {results_path}")
        if split == "test" or version.endswith("test"):
            logger.warning(
                f"'{dataset_name}' is the nuScenes test split: it has no annotations, so nothing "
                f"is scored. Submit {results_path} to the evaluation server."
            )
            return {}
        if not any(len(boxes) for boxes in results.values()):
            logger.warning(
                f"Results from {source} hold no box at all (every sample is an empty list, e.g. "
                "an untrained model below the score threshold): the devkit cannot score them; "
                "reporting mAP = NDS = 0 and every TP error 1."
            )
            return {"nuscenes": _zero_metrics(class_names)}
        return {"nuscenes": _run_detection_eval(nusc, results_path, split, out_dir, plot)}


def _run_detection_eval(nusc, results_path: str, split: str, out_dir: str, plot: bool):
    from nuscenes.eval.detection.evaluate import DetectionEval

    with tempfile.TemporaryDirectory(prefix="nusc_devkit_") as work:
        try:
            nusc_eval = DetectionEval(
                nusc,
                config=_eval_config(),
                result_path=results_path,
                eval_set=split,
                output_dir=work,
                verbose=False,
            )
        except Exception as e:
            if "Invalid box type" not in str(e):
                raise
            logger.warning(
                f"The devkit found no box to evaluate in split '{split}' (no ground truth box in "
                f"range): reporting zero metrics. ({e})"
            )
            return _zero_metrics(_eval_config().class_names)
        metrics, metric_data = nusc_eval.evaluate()
        summary = metrics.serialize()
        summary["meta"] = dict(nusc_eval.meta)
        write_json(os.path.join(out_dir, "metrics_summary.json"), summary)
        write_json(os.path.join(out_dir, "metrics_details.json"), metric_data.serialize())
        if plot:
            nusc_eval.render(metrics, metric_data)
            plot_dir = os.path.join(out_dir, "plots")
            shutil.rmtree(plot_dir, ignore_errors=True)
            shutil.move(os.path.join(work, "plots"), plot_dir)
    _log_table(summary)
    out = OrderedDict(mAP=float(summary["mean_ap"]), NDS=float(summary["nd_score"]))
    for key, short in _TP_METRICS:
        out[short] = float(summary["tp_errors"][key])
    for name, ap in summary["mean_dist_aps"].items():
        out[f"AP-{name}"] = float(ap)
    return out


class NuScenesEvaluator(GlobalFrameEvaluator):
    """Scores a model on a registered nuScenes split with the official devkit.

    ``process`` takes the model inputs (``sample_token``, ``lidar2ego``, ``ego2global`` 4x4) and
    outputs (``instances`` with ``pred_boxes3d: LiDARBoxes`` (N, 7|9), ``scores`` (N,),
    ``pred_classes`` (N,) indexing the dataset's ``thing_classes``). ``evaluate`` returns
    ``{"nuscenes": {"mAP", "NDS", "mATE", "mASE", "mAOE", "mAVE", "mAAE", "AP-<class>", ...}}``
    on the main rank (fractions, not percent) and ``{}`` on the others.

    Files in ``output_dir``: ``results_nusc.json`` (the submission), ``metrics_summary.json``,
    ``metrics_details.json``, with ``plot`` the devkit's curves in ``plots/``, and with
    ``vis_num_samples`` BEV images of the worst and best samples in ``vis/``.
    """

    evaluator_type = "nuscenes"

    def __init__(
        self,
        dataset_name: str,
        output_dir: Optional[str] = None,
        *,
        plot: bool = False,
        max_boxes_per_sample: int = 500,
        **kwargs,
    ):
        """
        Args:
            dataset_name (str): a split registered with ``d2_pillars.data.register_nuscenes``.
            output_dir (str): where files go; None keeps nothing on disk.
            plot (bool): also render the devkit's PR/TP curves (slow).
            max_boxes_per_sample (int): keep the highest-scored boxes (the devkit allows 500).
            kwargs: ``distributed``, ``vis_num_samples``, ``vis_score_thresh`` of
                :class:`GlobalFrameEvaluator`.
        """
        from nuscenes.eval.detection.utils import detection_name_to_rel_attributes

        super().__init__(dataset_name, output_dir, **kwargs)
        cfg = _eval_config()
        unknown = [c for c in self._class_names if c not in cfg.class_range]
        if unknown:
            raise ValueError(
                f"thing_classes {unknown} of '{dataset_name}' are not nuScenes detection classes "
                f"{sorted(cfg.class_range)}"
            )
        for name in self._class_names:
            allowed = set(detection_name_to_rel_attributes(name)) or {""}
            assert set(NUSCENES_DEFAULT_ATTRIBUTES[name]) <= allowed, name
        if not 0 < max_boxes_per_sample <= cfg.max_boxes_per_sample:
            raise ValueError(
                f"max_boxes_per_sample must be in [1, {cfg.max_boxes_per_sample}], "
                f"got {max_boxes_per_sample}"
            )
        self._plot = plot
        self._max_boxes = max_boxes_per_sample
        self._range_by_label = np.array(
            [cfg.class_range[c] for c in self._class_names], dtype=np.float64
        )
        self._moving = np.array([NUSCENES_DEFAULT_ATTRIBUTES[c][0] for c in self._class_names])
        self._static = np.array([NUSCENES_DEFAULT_ATTRIBUTES[c][1] for c in self._class_names])

    def convert(self, sample_token, instances, lidar2global, ego2global) -> List[dict]:
        """The sample's boxes as nuScenes result dicts (global frame), range-filtered and capped.

        The distance to the ego vehicle is the devkit's: the BEV norm of the box centre minus
        the ego pose translation, both global.
        """
        labels = instances.pred_classes.numpy().astype(np.int64)
        scores = instances.scores.numpy().astype(np.float64)
        names = self._labels_to_names(labels)
        rec = instances.pred_boxes3d.to_global_records(lidar2global)
        dist = np.linalg.norm(rec["translation"][:, :2] - ego2global[:2, 3], axis=1)
        keep = np.flatnonzero(dist < self._range_by_label[labels])
        keep = keep[np.argsort(-scores[keep], kind="stable")[: self._max_boxes]]
        velocity = rec.get("velocity")
        if velocity is None:
            velocity = np.zeros((len(scores), 2))
        velocity = np.nan_to_num(velocity, nan=0.0, posinf=0.0, neginf=0.0)
        moving = np.linalg.norm(velocity, axis=1) > SPEED_THRESHOLD
        attributes = np.where(moving, self._moving[labels], self._static[labels])
        translation = rec["translation"][keep].tolist()
        size = rec["size"][keep].tolist()
        rotation = rec["rotation"][keep].tolist()
        velocity = velocity[keep].tolist()
        return [
            {
                "sample_token": sample_token,
                "translation": translation[i],
                "size": size[i],
                "rotation": rotation[i],
                "velocity": velocity[i],
                "detection_name": str(names[k]),
                "detection_score": float(scores[k]),
                "attribute_name": str(attributes[k]),
            }
            for i, k in enumerate(keep.tolist())
        ]

    def score(self, results, source):
        """The devkit's metrics of ``results``; the results JSON and the devkit summary (and,
        with ``plot``, its curves) go to ``output_dir``."""
        return _score_nuscenes(
            results, self._dataset_name, self._output_dir, source=source, plot=self._plot
        )


def evaluate_nuscenes_results(
    results_json: str, dataset_name: str, output_dir: Optional[str] = None, *, plot: bool = False
) -> Dict[str, Dict[str, float]]:
    """Score an existing nuScenes results JSON on a registered split (no model needed).

    Returns:
        dict: ``{"nuscenes": {...}}`` as :class:`NuScenesEvaluator` (``{}`` off the main rank
        and on a test split). The devkit summary goes to ``output_dir`` (None: not kept).
    """
    if not comm.is_main_process():
        return {}
    results, _ = load_nuscenes_results(results_json)
    nan_velocity = sum(
        1
        for boxes in results.values()
        for box in boxes
        if not np.all(np.isfinite(np.asarray(box["velocity"], dtype=np.float64)))
    )
    if nan_velocity:
        logger.warning(
            f"{results_json}: {nan_velocity} boxes have a NaN/inf velocity; the devkit skips "
            "them in mAVE instead of penalising them"
        )
    return _score_nuscenes(
        results,
        dataset_name,
        output_dir,
        source=f"file {results_json}",
        results_path=os.path.abspath(results_json),
        plot=plot,
    )
