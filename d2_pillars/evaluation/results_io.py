"""Reading and writing detection results files (nuScenes JSON, Lyft JSON and Kaggle CSV).

Every writer is atomic (``d2_pillars.utils.file_io.atomic_open``): an interrupted evaluation
leaves either the previous file or none, never a partial one. Readers check the format and raise
:class:`ResultsFileError` naming the file and what is wrong.

Formats (all boxes in the global frame):

* nuScenes: ``{"meta": {...}, "results": {sample_token: [box, ...]}}`` with boxes
  ``{sample_token, translation [x, y, z] (centre), size [w, l, h], rotation [w, x, y, z],
  velocity [vx, vy], detection_name, detection_score, attribute_name}``.
* Lyft JSON: the same layout with boxes ``{sample_token, translation, size, rotation, name,
  score}`` (the SDK's ``Box3D`` fields).
* Lyft Kaggle CSV: header ``Id,PredictionString``, one row per sample;
  ``PredictionString`` repeats ``score x y z w l h yaw class`` separated by spaces (yaw from the
  quaternion, pyquaternion's ``yaw_pitch_roll[0]``), empty for a sample without boxes.
"""

import csv
import io
import json
import math
import numpy as np
import os
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from d2_pillars.utils.file_io import atomic_open

__all__ = [
    "ResultsFileError",
    "NUSCENES_META",
    "write_json",
    "write_nuscenes_results",
    "load_nuscenes_results",
    "write_lyft_results",
    "write_lyft_csv",
    "load_lyft_results",
    "check_sample_tokens",
    "quaternion_yaw",
]

#: The ``meta`` of a LiDAR-only nuScenes submission.
NUSCENES_META = {
    "use_camera": False,
    "use_lidar": True,
    "use_radar": False,
    "use_map": False,
    "use_external": False,
}

_NUSCENES_BOX_KEYS = (
    "sample_token",
    "translation",
    "size",
    "rotation",
    "velocity",
    "detection_name",
    "detection_score",
    "attribute_name",
)
_LYFT_BOX_KEYS = ("sample_token", "translation", "size", "rotation", "name", "score")


class ResultsFileError(ValueError):
    """A results file is missing, malformed, or does not match the dataset split."""


def write_json(path: str, obj) -> None:
    """Write ``obj`` as JSON to ``path`` atomically."""
    with atomic_open(path, "w") as f:
        json.dump(obj, f)


def _read_json(path: str):
    if not os.path.isfile(path):
        raise ResultsFileError(f"Results file {path} does not exist")
    try:
        with open(path) as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ResultsFileError(f"Results file {path} is not valid JSON: {e}") from e


def _check_results_layout(data, path: str, box_keys: Sequence[str]) -> Dict[str, List[dict]]:
    if not isinstance(data, dict) or not isinstance(data.get("results"), dict):
        raise ResultsFileError(
            f"Results file {path} must hold a JSON object with a 'results' dict "
            "{sample_token: [box, ...]}"
        )
    results = data["results"]
    for token, boxes in results.items():
        if not isinstance(boxes, list):
            raise ResultsFileError(f"{path}: results[{token!r}] must be a list of boxes")
        for box in boxes:
            missing = [k for k in box_keys if k not in box] if isinstance(box, dict) else box_keys
            if missing:
                raise ResultsFileError(
                    f"{path}: a box of sample {token} lacks the fields {list(missing)} "
                    f"(expected {list(box_keys)})"
                )
            if box["sample_token"] != token:
                raise ResultsFileError(
                    f"{path}: a box listed under sample {token} names sample {box['sample_token']}"
                )
    return results


# ----------------------------------------------------------------------------------------- nuScenes
def write_nuscenes_results(
    path: str, results: Dict[str, List[dict]], meta: Optional[dict] = None
) -> None:
    """Write the official nuScenes detection results JSON atomically.

    Args:
        path (str): output file.
        results (dict[str, list[dict]]): boxes per sample token (every sample of the split, an
            empty list for a sample without boxes).
        meta (dict): submission meta; defaults to :data:`NUSCENES_META` (LiDAR only).
    """
    write_json(path, {"meta": dict(meta or NUSCENES_META), "results": results})


def _check_nuscenes_names(results: Dict[str, List[dict]], path: str) -> None:
    """Every ``detection_name`` / ``attribute_name`` must be one the devkit knows (it would
    otherwise stop on an ``AssertionError`` that names neither the file nor the sample)."""
    from nuscenes.eval.detection.constants import ATTRIBUTE_NAMES, DETECTION_NAMES

    names = {b["detection_name"] for boxes in results.values() for b in boxes}
    unknown = sorted(map(str, names - set(DETECTION_NAMES)))
    if unknown:
        raise ResultsFileError(
            f"{path}: unknown detection_name {unknown}; the nuScenes detection classes are "
            f"{list(DETECTION_NAMES)}. Map your classes to these names before scoring."
        )
    attributes = {b["attribute_name"] for boxes in results.values() for b in boxes}
    unknown = sorted(map(str, attributes - set(ATTRIBUTE_NAMES) - {""}))
    if unknown:
        raise ResultsFileError(
            f"{path}: unknown attribute_name {unknown}; use one of {list(ATTRIBUTE_NAMES)} or ''"
        )


def load_nuscenes_results(path: str) -> Tuple[Dict[str, List[dict]], dict]:
    """Read a nuScenes results JSON; returns ``(results, meta)`` (format and class names
    checked)."""
    data = _read_json(path)
    results = _check_results_layout(data, path, _NUSCENES_BOX_KEYS)
    _check_nuscenes_names(results, path)
    meta = data.get("meta")
    if not isinstance(meta, dict):
        raise ResultsFileError(
            f"{path}: the nuScenes results format needs a 'meta' dict "
            f"(e.g. {json.dumps(NUSCENES_META)})"
        )
    return results, meta


# ----------------------------------------------------------------------------------------- Lyft
def write_lyft_results(path: str, results: Dict[str, List[dict]], meta: Optional[dict] = None):
    """Write Lyft results as JSON (``{"meta", "results"}``, SDK box fields) atomically."""
    write_json(path, {"meta": dict(meta or {"use_lidar": True}), "results": results})


def quaternion_yaw(rotation: np.ndarray) -> np.ndarray:
    """(N,) pyquaternion ``yaw_pitch_roll[0]`` of (N, 4) ``[w, x, y, z]`` quaternions."""
    q = np.asarray(rotation, dtype=np.float64).reshape(-1, 4)
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    w, x, y, z = q.T
    return np.arctan2(2 * (w * z - x * y), 1 - 2 * (y * y + z * z))


def _prediction_string(boxes: List[dict]) -> str:
    if not boxes:
        return ""
    yaws = quaternion_yaw([b["rotation"] for b in boxes])
    fields = []
    for box, yaw in zip(boxes, yaws.tolist()):
        values = [box["score"], *box["translation"], *box["size"], yaw]
        fields.append(" ".join(repr(float(v)) for v in values) + " " + box["name"])
    return " ".join(fields)


def write_lyft_csv(
    path: str, results: Dict[str, List[dict]], sample_tokens: Optional[Iterable[str]] = None
) -> None:
    """Write the Kaggle submission CSV (``Id,PredictionString``) atomically.

    Args:
        results: SDK-style boxes per sample token (global frame).
        sample_tokens: the row order (e.g. the ``Id`` column of Kaggle's
            ``sample_submission.csv``); every token of ``results`` must be in it. Defaults to the
            keys of ``results``.
    """
    tokens = list(results) if sample_tokens is None else list(sample_tokens)
    unknown = set(results) - set(tokens)
    if unknown:
        raise ResultsFileError(
            f"{len(unknown)} result samples are not rows of the submission for {path} "
            f"(e.g. {sorted(unknown)[:3]})"
        )
    with atomic_open(path, "w") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["Id", "PredictionString"])
        for token in tokens:
            writer.writerow([token, _prediction_string(results.get(token, []))])


def _yaw_quaternion(yaw: float) -> List[float]:
    return [math.cos(yaw / 2), 0.0, 0.0, math.sin(yaw / 2)]


def _read_lyft_csv(path: str) -> Dict[str, List[dict]]:
    with open(path, newline="") as f:
        text = f.read()
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if header is None or [h.strip() for h in header[:2]] != ["Id", "PredictionString"]:
        raise ResultsFileError(
            f"{path}: a Lyft submission CSV starts with the header 'Id,PredictionString'; "
            f"got {header}"
        )
    results: Dict[str, List[dict]] = {}
    for line, row in enumerate(reader, start=2):
        if not row:
            continue
        token = row[0].strip()
        fields = row[1].split() if len(row) > 1 else []
        if fields and fields[0].lower() == "nan":
            fields = []
        if len(fields) % 9:
            raise ResultsFileError(
                f"{path}:{line}: PredictionString must repeat 'score x y z w l h yaw class' "
                f"(9 fields per box); got {len(fields)} fields"
            )
        boxes = []
        for i in range(0, len(fields), 9):
            try:
                score, x, y, z, w, l, h, yaw = (float(v) for v in fields[i : i + 8])
            except ValueError as e:
                raise ResultsFileError(f"{path}:{line}: {e}") from e
            boxes.append(
                {
                    "sample_token": token,
                    "translation": [x, y, z],
                    "size": [w, l, h],
                    "rotation": _yaw_quaternion(yaw),
                    "name": fields[i + 8],
                    "score": score,
                }
            )
        if token in results:
            raise ResultsFileError(f"{path}:{line}: sample {token} appears twice")
        results[token] = boxes
    return results


def load_lyft_results(path: str) -> Dict[str, List[dict]]:
    """Read Lyft results from a JSON (``{"results": ...}``) or Kaggle CSV file.

    Returns:
        dict[str, list[dict]]: SDK-style boxes (``sample_token``, ``translation``, ``size``,
        ``rotation``, ``name``, ``score``) per sample token.
    """
    if not os.path.isfile(path):
        raise ResultsFileError(f"Results file {path} does not exist")
    if path.lower().endswith(".csv"):
        return _read_lyft_csv(path)
    return _check_results_layout(_read_json(path), path, _LYFT_BOX_KEYS)


# ----------------------------------------------------------------------------------------- checks
def check_sample_tokens(
    tokens: Iterable[str], expected: Iterable[str], *, source: str, split: str
) -> None:
    """Raise :class:`ResultsFileError` unless ``tokens`` are exactly the ``expected`` ones.

    Args:
        tokens: sample tokens of the results.
        expected: sample tokens of the split.
        source: what the results came from (a file name, "the processed inputs").
        split: the split's description (dataset name and split), for the message.
    """
    tokens, expected = set(tokens), set(expected)
    missing, extra = expected - tokens, tokens - expected
    if not missing and not extra:
        return
    parts = []
    if missing:
        parts.append(
            f"{len(missing)} samples of the split are missing (e.g. {sorted(missing)[:3]})"
        )
    if extra:
        parts.append(f"{len(extra)} samples are not in the split (e.g. {sorted(extra)[:3]})")
    hint = (
        " The results seem to be for another split or dataset version."
        if extra and len(extra) >= len(tokens) / 2
        else " Every sample of the split needs an entry (an empty list when it has no box)."
    )
    raise ResultsFileError(
        f"Results from {source} do not match {split} ({len(expected)} samples): "
        + "; ".join(parts)
        + "."
        + hint
    )
