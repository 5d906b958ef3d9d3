"""What a synthetic dataset format is made of (:class:`FormatSpec`, :class:`GenerationOptions`)
and the helpers every format shares (tokens, placeholder images, attribute groups).

The two formats themselves are data: :mod:`.nuscenes_format` and :mod:`.lyft_format`;
:mod:`.writer` generates scenes in either.
"""

import dataclasses
import hashlib
import io
import numpy as np
import os
from typing import Callable, Dict, Optional, Tuple

from .lidar import LidarSpec
from .world import OBJECT_KINDS, WorldSpec

__all__ = [
    "TABLE_NAMES",
    "GPS_EPOCH_UNIX_NS",
    "VISIBILITY",
    "FormatSpec",
    "GenerationOptions",
    "attribute_group",
    "make_token",
    "placeholder_png",
    "validate_spec",
]

TABLE_NAMES = (
    "attribute",
    "calibrated_sensor",
    "category",
    "ego_pose",
    "instance",
    "log",
    "map",
    "sample",
    "sample_annotation",
    "sample_data",
    "scene",
    "sensor",
    "visibility",
)
GPS_EPOCH_UNIX_NS = 315_964_800 * 10**9  # 1980-01-06 in Unix time
VISIBILITY = (
    ("1", "v0-40", "visibility of whole object is between 0 and 40%"),
    ("2", "v40-60", "visibility of whole object is between 40 and 60%"),
    ("3", "v60-80", "visibility of whole object is between 60 and 80%"),
    ("4", "v80-100", "visibility of whole object is between 80 and 100%"),
)
_VEHICLES = ("car", "truck", "bus", "trailer", "construction_vehicle", "emergency_vehicle")
_CYCLES = ("bicycle", "motorcycle")


def attribute_group(kind: str) -> Optional[str]:
    if kind in _VEHICLES:
        return "vehicle"
    if kind in _CYCLES:
        return "cycle"
    if kind in ("pedestrian", "animal"):
        return kind
    return None


@dataclasses.dataclass(frozen=True)
class GenerationOptions:
    """What to generate (the format-independent knobs)."""

    num_scenes: int = 10
    keyframes_per_scene: int = 40
    seed: int = 0
    version: Optional[str] = None  # None: the format's default version
    num_beams: Optional[int] = None  # None: the format's LiDAR
    azimuth_steps: Optional[int] = None

    def __post_init__(self):
        if self.num_scenes < 1 or self.keyframes_per_scene < 2:
            raise ValueError(
                f"need num_scenes >= 1 and keyframes_per_scene >= 2, got {self.num_scenes}, "
                f"{self.keyframes_per_scene}"
            )


@dataclasses.dataclass(frozen=True)
class FormatSpec:
    """Everything that differs between the nuScenes and Lyft on-disk formats."""

    name: str
    seed_salt: int  # separates the random streams of the formats
    versions: Tuple[str, ...]  # first = default
    table_dir: str  # tables folder relative to the root; "{version}" is substituted
    data_dir: str  # devkit data root relative to the root; file names are relative to it
    owned_dirs: Tuple[str, ...]  # what a forced regeneration may delete (relative to the root)
    token_hex: int
    lidar: LidarSpec
    world: WorldSpec
    mount_translation: Tuple[float, float, float]
    mount_ypr_deg: Tuple[float, float, float]
    sweep_period_ns: int
    keyframe_every: int  # sweeps per keyframe interval (1: every sweep is a keyframe)
    constant_intensity: Optional[float]
    count_lidar_points: bool  # False: num_lidar_pts = -1 as in the Lyft release
    write_visibility: bool  # False: visibility_token = "" as in the Lyft release
    integer_timestamps: bool
    integer_zero_rotation: bool  # annotation rotation [w, 0, 0, z] with integer zeros
    ego_pose_token_is_sample_data_token: bool
    scene_token_is_log_token: bool
    sample_data_fileformat: str
    sample_data_extra: Dict[str, int]
    categories: Tuple[Tuple[str, str], ...]  # (name, description)
    kind_categories: Dict[str, Dict[str, float]]  # object kind -> {category: weight}
    attributes: Tuple[Tuple[str, str], ...]
    attribute_of: Dict[Tuple[str, int], str]  # (attribute group, state) -> attribute name
    # (spec, options, version, scene_index) -> {"log": log record, "t0_ns": start (Unix ns),
    # "scene_name": name, may hold {gps_start_ns} / {gps_end_ns}, ...}
    scene_meta: Callable
    # (version, num_scenes) -> scene names when the format has fixed ones (raises if too many)
    scene_names: Optional[Callable]
    lidar_filename: Callable  # (meta, t_ns, is_key_frame) -> file name
    map_records: Callable  # (spec, options, logs) -> [(record, png bytes)]
    json_indent: Optional[int]

    def tables_path(self, root: str, version: str) -> str:
        return os.path.join(root, self.table_dir.format(version=version))

    def data_path(self, root: str) -> str:
        return os.path.join(root, self.data_dir) if self.data_dir else root

    def resolve(self, options: GenerationOptions) -> Tuple[str, LidarSpec]:
        version = options.version or self.versions[0]
        if version not in self.versions:
            raise ValueError(
                f"{self.name}: unknown version {version!r}; choose one of {self.versions}"
            )
        if self.scene_names is not None:
            self.scene_names(version, options.num_scenes)  # raises if there are too few names
        lidar = dataclasses.replace(
            self.lidar,
            num_beams=options.num_beams or self.lidar.num_beams,
            azimuth_steps=options.azimuth_steps or self.lidar.azimuth_steps,
        )
        return version, lidar


def make_token(
    spec: FormatSpec, options: GenerationOptions, *parts, nhex: Optional[int] = None
) -> str:
    key = "|".join(str(p) for p in (spec.name, options.seed) + parts)
    return hashlib.blake2b(key.encode(), digest_size=(nhex or spec.token_hex) // 2).hexdigest()


def placeholder_png(height: int, width: int, channels: int, rng: np.random.Generator) -> bytes:
    """A small map raster (a road band on background) encoded as PNG."""
    from PIL import Image

    img = np.zeros((height, width, channels), np.uint8)
    img[height // 3 : 2 * height // 3] = 255
    img = np.where(rng.uniform(size=img.shape[:2] + (1,)) < 0.02, 255 - img, img)
    buf = io.BytesIO()
    Image.fromarray(img[..., 0] if channels == 1 else img).save(buf, format="PNG")
    return buf.getvalue()


def validate_spec(spec: FormatSpec) -> None:
    """Every kind that a scene can contain must map to a category of the format."""
    mixes = (
        spec.world.lane_mix,
        spec.world.cycle_mix,
        spec.world.parking_mix,
        spec.world.walker_mix,
        spec.world.sidewalk_static_mix,
    )
    kinds = {k for m in mixes for k, w in m.items() if w > 0} | set(spec.world.guaranteed_kinds)
    if spec.world.work_zone_prob > 0:
        kinds |= {k for k, w in spec.world.work_zone_mix.items() if w > 0}
    names = {n for n, _ in spec.categories}
    for kind in kinds:
        if kind not in OBJECT_KINDS or kind not in spec.kind_categories:
            raise ValueError(f"{spec.name}: object kind {kind!r} has no category")
        if not set(spec.kind_categories[kind]) <= names:
            raise ValueError(f"{spec.name}: categories of {kind!r} are not in the category table")
    attrs = {n for n, _ in spec.attributes}
    if not set(spec.attribute_of.values()) <= attrs:
        raise ValueError(f"{spec.name}: attribute map names unknown attributes")
