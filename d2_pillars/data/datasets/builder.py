"""Info building shared by nuScenes and Lyft: one record per keyframe, read through the devkit.

What differs between the two datasets is data, held in a :class:`DatasetSpec` (``nuscenes.py``,
``lyft.py``): the SDK class, the detection classes and the category map, the sweep rule, whether
boxes carry velocity, and how scenes fall into splits. Everything else is here.

A record (``docs/internals.md``) holds plain numpy arrays and strings, never devkit objects, and
records are produced one keyframe at a time, so building needs little memory on top of the
devkit's own tables. Paths in records are relative to the dataset root.
"""

import logging
import math
import numpy as np
import os
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple
from pyquaternion import Quaternion

from d2_pillars.structures import LiDARBoxes

from .infos import devkit_version, save_infos

__all__ = [
    "DatasetSpec",
    "pose_matrix",
    "invert_pose",
    "iter_keyframes",
    "build_record",
    "iter_records",
    "create_infos",
    "info_path",
    "infos_up_to_date",
    "check_lidar_files",
    "check_dataset_files",
    "lidar_files",
    "valid_box_mask",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DatasetSpec:
    """Everything dataset-specific that info building and registration need.

    Attributes:
        name: "nuscenes" or "lyft" (also the info file prefix and the evaluator type).
        classes: detection classes in label order.
        category_map: raw devkit category name -> detection class; others map to "" (label -1).
        open_sdk: ``(root, version, verbose) -> SDK`` (``NuScenes`` / ``LyftDataset``).
        splits: ``(version, scene_names, scene_split) -> {split: [scene names]}``.
        versions: the known versions (for the CLI help).
        sweeps_keyframes_only: previous sweeps are keyframes only (Lyft: every LiDAR sample_data
            is a keyframe) rather than every previous LiDAR sample_data (nuScenes).
        has_velocity: boxes are (x, y, z, l, w, h, yaw, vx, vy) with ``sdk.box_velocity``.
        lidar_channel: the LiDAR sample_data channel.
        point_load_dim: float32 values per point in the LiDAR files.
        test_versions: versions without annotations.
    """

    name: str
    classes: Tuple[str, ...]
    category_map: Dict[str, str]
    open_sdk: Callable
    splits: Callable
    versions: Tuple[str, ...]
    sweeps_keyframes_only: bool
    has_velocity: bool
    lidar_channel: str = "LIDAR_TOP"
    point_load_dim: int = 5
    test_versions: Tuple[str, ...] = field(default_factory=tuple)

    def detection_name(self, category: str) -> str:
        return self.category_map.get(category, "")

    def has_annotations(self, version: str) -> bool:
        return version not in self.test_versions


# ------------------------------------------------------------------------------------------- #
# Poses
# ------------------------------------------------------------------------------------------- #
def pose_matrix(translation: Sequence[float], rotation_wxyz: Sequence[float]) -> np.ndarray:
    """(4, 4) float64 rigid transform from a devkit translation and ``[w, x, y, z]`` quaternion."""
    m = np.eye(4)
    m[:3, :3] = Quaternion(list(rotation_wxyz)).rotation_matrix
    m[:3, 3] = translation
    return m


def invert_pose(m: np.ndarray) -> np.ndarray:
    """Inverse of a (4, 4) rigid transform."""
    inv = np.eye(4)
    rot_t = m[:3, :3].T
    inv[:3, :3] = rot_t
    inv[:3, 3] = -rot_t @ m[:3, 3]
    return inv


def _sensor_poses(sdk, sd) -> Tuple[np.ndarray, np.ndarray]:
    cs = sdk.get("calibrated_sensor", sd["calibrated_sensor_token"])
    pose = sdk.get("ego_pose", sd["ego_pose_token"])
    return (
        pose_matrix(cs["translation"], cs["rotation"]),
        pose_matrix(pose["translation"], pose["rotation"]),
    )


def _relpath(sdk, sd_token: str, root: str) -> str:
    return os.path.relpath(os.path.abspath(str(sdk.get_sample_data_path(sd_token))), root)


# ------------------------------------------------------------------------------------------- #
# Records
# ------------------------------------------------------------------------------------------- #
def iter_keyframes(sdk, scene_names: Optional[Sequence[str]] = None) -> List[dict]:
    """Sample records of the given scenes (all scenes if None), by scene then time.

    Reads the sample table rather than walking ``next`` links, so excerpts of a dataset whose
    chains point outside the tables still work.
    """
    wanted = None if scene_names is None else set(scene_names)
    scenes = [s for s in sdk.scene if wanted is None or s["name"] in wanted]
    order = {s["token"]: i for i, s in enumerate(scenes)}
    samples = [s for s in sdk.sample if s["scene_token"] in order]
    samples.sort(key=lambda s: (order[s["scene_token"]], s["timestamp"]))
    return samples


class _Counters:
    def __init__(self):
        self.broken_sweep_chains = 0
        self.invalid_boxes = 0
        self.invalid_box_examples: List[str] = []


def _sweeps(sdk, spec, sd, scene_token, key_to_lidar, root, max_sweeps, counters):
    """Up to ``max_sweeps`` previous sweeps, nearest first, stopping at the scene start."""
    sweeps = []
    prev = sd["prev"]
    while prev and len(sweeps) < max_sweeps:
        try:
            psd = sdk.get("sample_data", prev)
            psample = sdk.get("sample", psd["sample_token"])
        except KeyError:  # the chain leaves the tables (dataset excerpts)
            counters.broken_sweep_chains += 1
            break
        if psample["scene_token"] != scene_token:
            break
        prev = psd["prev"]
        if spec.sweeps_keyframes_only and not psd["is_key_frame"]:
            continue
        lidar2ego_s, ego2global_s = _sensor_poses(sdk, psd)
        sweeps.append(
            {
                "lidar_path": _relpath(sdk, psd["token"], root),
                "timestamp": psd["timestamp"] / 1e6,
                "sweep2lidar": key_to_lidar @ ego2global_s @ lidar2ego_s,
            }
        )
    return sweeps


def valid_box_mask(boxes: np.ndarray) -> np.ndarray:
    """(K,) bool: the box (K, 7|9) is finite and its sizes ``l, w, h`` are > 0.

    Info building drops the other boxes (with a warning): a degenerate annotation has no
    geometry to learn, and the mapper refuses records that hold one.
    """
    boxes = np.asarray(boxes)
    return np.isfinite(boxes).all(axis=1) & (boxes[:, 3:6] > 0).all(axis=1)


def _annotations(sdk, spec, sample, lidar_token, lidar2ego, ego2global, counters=None):
    ann_tokens = list(sample["anns"])
    anns = [sdk.get("sample_annotation", t) for t in ann_tokens]
    # Devkit boxes in the keyframe LiDAR frame, in ``ann_tokens`` order.
    _, boxes, _ = sdk.get_sample_data(lidar_token, selected_anntokens=ann_tokens)
    tensor = LiDARBoxes.from_devkit_boxes(boxes).tensor.numpy()  # (K, 7) float32
    if spec.has_velocity:
        velocity = np.zeros((len(anns), 3))
        for i, t in enumerate(ann_tokens):
            velocity[i, :2] = sdk.box_velocity(t)[:2]  # global frame, NaN when unknown
        # Rotate (never translate) into the LiDAR frame: v_l = R_l2e^T R_e2g^T v_g.
        rot = ego2global[:3, :3] @ lidar2ego[:3, :3]
        velocity = velocity @ rot
        velocity = np.nan_to_num(velocity[:, :2], nan=0.0, posinf=0.0, neginf=0.0)
        tensor = np.concatenate([tensor, velocity.astype(np.float32)], axis=1)
    categories = [a["category_name"] for a in anns]
    names = [spec.detection_name(c) for c in categories]
    labels = np.array([spec.classes.index(n) if n else -1 for n in names], dtype=np.int64)
    num_lidar = np.array([a.get("num_lidar_pts", -1) for a in anns], dtype=np.int64)
    num_radar = np.array([a.get("num_radar_pts", -1) for a in anns], dtype=np.int64)
    width = 9 if spec.has_velocity else 7
    tensor = np.ascontiguousarray(tensor, dtype=np.float32).reshape(-1, width)
    valid = valid_box_mask(tensor)
    if not valid.all():
        # Zero/negative sizes or NaN values (a degenerate annotation): dropped, and counted.
        bad = np.flatnonzero(~valid)
        if counters is not None:
            counters.invalid_boxes += bad.size
            counters.invalid_box_examples.extend(ann_tokens[i] for i in bad[:3])
        keep = np.flatnonzero(valid)
        tensor, labels = tensor[keep], labels[keep]
        num_lidar, num_radar = num_lidar[keep], num_radar[keep]
        names = [names[i] for i in keep]
        categories = [categories[i] for i in keep]
    return {
        "gt_boxes": tensor,
        "gt_names": names,
        "gt_labels": labels,
        "gt_categories": categories,
        "num_lidar_pts": num_lidar,
        "num_radar_pts": num_radar,
        "valid_flag": (num_lidar + num_radar) > 0,
    }


def build_record(
    sdk,
    spec: DatasetSpec,
    sample: dict,
    *,
    root: str,
    max_sweeps: int,
    with_annotations: bool,
    counters: Optional[_Counters] = None,
) -> dict:
    """The info record of one keyframe ``sample`` (format in ``docs/internals.md``)."""
    counters = counters or _Counters()
    root = os.path.abspath(root)
    lidar_token = sample["data"][spec.lidar_channel]
    sd = sdk.get("sample_data", lidar_token)
    lidar2ego, ego2global = _sensor_poses(sdk, sd)
    key_to_lidar = invert_pose(lidar2ego) @ invert_pose(ego2global)
    scene = sdk.get("scene", sample["scene_token"])
    record = {
        "dataset": spec.name,
        "sample_token": sample["token"],
        "scene_token": sample["scene_token"],
        "scene_name": scene["name"],
        "timestamp": sd["timestamp"] / 1e6,
        "lidar_path": _relpath(sdk, lidar_token, root),
        "lidar2ego": lidar2ego,
        "ego2global": ego2global,
        "sweeps": _sweeps(
            sdk, spec, sd, sample["scene_token"], key_to_lidar, root, max_sweeps, counters
        ),
    }
    if with_annotations:
        record.update(_annotations(sdk, spec, sample, lidar_token, lidar2ego, ego2global, counters))
    return record


def iter_records(
    sdk,
    spec: DatasetSpec,
    samples: Sequence[dict],
    *,
    root: str,
    max_sweeps: int,
    with_annotations: bool,
    progress: bool = True,
) -> Iterator[dict]:
    """Yield :func:`build_record` for each sample, with a tqdm progress bar (ETA)."""
    from tqdm import tqdm

    counters = _Counters()
    for sample in tqdm(
        samples, desc=f"{spec.name} infos", unit="keyframe", disable=not progress, smoothing=0.05
    ):
        try:
            record = build_record(
                sdk,
                spec,
                sample,
                root=root,
                max_sweeps=max_sweeps,
                with_annotations=with_annotations,
                counters=counters,
            )
        except (AssertionError, KeyError, ValueError) as e:  # the devkit's checks, broken links
            raise RuntimeError(
                f"Building the {spec.name} info record of sample {sample['token']} failed "
                f"({type(e).__name__}: {e}): its tables (sample_data, sample_annotation, poses) "
                f"under {root} are inconsistent or damaged."
            ) from e
        yield record
    if counters.broken_sweep_chains:
        logger.warning(
            "%d keyframes: the chain of previous sweeps points to sample_data missing from the "
            "tables; their sweeps stop there.",
            counters.broken_sweep_chains,
        )
    if counters.invalid_boxes:
        logger.warning(
            "Dropped %d annotations with a size <= 0 or NaN/inf values from the infos (they "
            "have no geometry to learn; the evaluation reads the devkit's own tables), e.g. "
            "sample_annotation %s",
            counters.invalid_boxes,
            counters.invalid_box_examples[:3],
        )


# ------------------------------------------------------------------------------------------- #
# Whole dataset
# ------------------------------------------------------------------------------------------- #
def info_path(root: str, dataset: str, split: str, out_dir: Optional[str] = None) -> str:
    """``{out_dir or root}/{dataset}_infos_{split}.pkl``."""
    return os.path.join(out_dir or root, f"{dataset}_infos_{split}.pkl")


def infos_up_to_date(
    root: str, dataset: str, splits: Sequence[str], stamp_file: Optional[str] = None
) -> bool:
    """Whether the info files of every split in ``splits`` (:func:`info_path` under ``root``)
    exist and none is older than ``stamp_file``: a file rewritten whenever the dataset changes,
    e.g. the synthetic generator's marker. A missing ``stamp_file`` dates nothing."""
    stamp = os.path.getmtime(stamp_file) if stamp_file and os.path.exists(stamp_file) else 0.0
    paths = [info_path(root, dataset, split) for split in splits]
    return all(os.path.isfile(p) and os.path.getmtime(p) >= stamp for p in paths)


def create_infos(
    spec: DatasetSpec,
    root: str,
    version: str,
    *,
    max_sweeps: int = 10,
    out_dir: Optional[str] = None,
    scene_split: str = "official",
    progress: bool = True,
    sdk=None,
) -> Dict[str, str]:
    """Build and write the info file of every split of ``version``.

    Args:
        spec: the dataset (``NUSCENES_SPEC`` / ``LYFT_SPEC``).
        root: dataset root (the devkit's ``dataroot``).
        version: e.g. "v1.0-trainval", "v1.0-mini", "v1.01-train".
        max_sweeps: previous sweeps stored per keyframe.
        out_dir: where to write; default ``root``.
        scene_split: how scenes fall into splits (see the spec's ``splits``).
        sdk: an already opened SDK for ``root``/``version`` (else opened here).

    Returns:
        dict: split name -> written info file path.
    """
    root = os.path.abspath(os.path.expanduser(root))
    if max_sweeps < 0:
        raise ValueError(f"max_sweeps must be >= 0, got {max_sweeps}")
    if sdk is None:
        sdk = spec.open_sdk(root, version, verbose=progress)
    scene_names = [s["name"] for s in sdk.scene]
    splits, rule = spec.splits(version, scene_names, scene_split)
    assigned = {name for names in splits.values() for name in names}
    unassigned = [n for n in scene_names if n not in assigned]
    if unassigned:
        logger.warning(
            "%d of %d scenes of %s are in none of the splits %s and are skipped (e.g. %s)",
            len(unassigned),
            len(scene_names),
            version,
            sorted(splits),
            unassigned[:3],
        )
    with_annotations = spec.has_annotations(version)
    base_meta = {
        "dataset": spec.name,
        "version": version,
        "devkit_version": devkit_version(spec.name),
        "classes": list(spec.classes),
        "max_sweeps": int(max_sweeps),
        "point_load_dim": spec.point_load_dim,
        "lidar_channel": spec.lidar_channel,
        "has_annotations": with_annotations,
        "scene_split": scene_split,
        "scene_split_rule": rule,
    }
    # One pass over the keyframes of all split scenes; each record goes to its split's list.
    split_of_scene = {name: split for split, names in splits.items() for name in names}
    samples = iter_keyframes(sdk, [n for n in scene_names if n in split_of_scene])
    per_split: Dict[str, List[dict]] = {split: [] for split in splits}
    for record in iter_records(
        sdk,
        spec,
        samples,
        root=root,
        max_sweeps=max_sweeps,
        with_annotations=with_annotations,
        progress=progress,
    ):
        per_split[split_of_scene[record["scene_name"]]].append(record)
    written = {}
    for split, records in per_split.items():
        path = info_path(root, spec.name, split, out_dir)
        meta = dict(base_meta, split=split, scenes=sorted(splits[split]))
        save_infos(path, records, meta)
        written[split] = path
    return written


def lidar_files(sdk, spec: DatasetSpec) -> List[str]:
    """Absolute paths of every LiDAR file of ``spec.lidar_channel`` in the SDK's tables."""
    channel_tokens = {
        cs["token"]
        for cs in sdk.calibrated_sensor
        if sdk.get("sensor", cs["sensor_token"])["channel"] == spec.lidar_channel
    }
    return [
        os.path.abspath(str(sdk.get_sample_data_path(sd["token"])))
        for sd in sdk.sample_data
        if sd["calibrated_sensor_token"] in channel_tokens
    ]


def check_dataset_files(
    spec: DatasetSpec, root: str, version: str, *, sdk=None, verbose: bool = False
) -> Tuple[int, List[Tuple[str, str]]]:
    """Check every LiDAR file of ``version`` (keyframes and sweeps) through the devkit.

    Returns:
        (number of files checked, [(path, problem), ...] for missing or corrupt files).
    """
    root = os.path.abspath(os.path.expanduser(root))
    if sdk is None:
        sdk = spec.open_sdk(root, version, verbose=verbose)
    paths = lidar_files(sdk, spec)
    return len(paths), check_lidar_files(paths, spec.point_load_dim)


def check_lidar_files(paths: Sequence[str], load_dim: int = 5) -> List[Tuple[str, str]]:
    """``(path, problem)`` for each file that is missing or whose size is not a multiple of
    ``load_dim`` float32 values."""
    record_bytes = 4 * load_dim
    problems = []
    for path in paths:
        try:
            size = os.path.getsize(path)
        except OSError:
            problems.append((path, "missing"))
            continue
        if size % record_bytes:
            problems.append(
                (path, f"corrupt: {size} bytes is not a multiple of {load_dim} float32 values")
            )
    return problems


def last_fraction_split(scene_names: Sequence[str], val_fraction: float) -> Dict[str, List[str]]:
    """Split scenes sorted by name: the last ``ceil(val_fraction * n)`` are "val"."""
    names = sorted(scene_names)
    n_val = int(math.ceil(val_fraction * len(names))) if names else 0
    if len(names) > 1:
        n_val = min(max(n_val, 1), len(names) - 1)
    return {"train": names[: len(names) - n_val], "val": names[len(names) - n_val :]}
