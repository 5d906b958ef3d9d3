"""Built-in synthetic datasets in the exact on-disk formats of nuScenes and Lyft.

A smoke test before downloading hundreds of gigabytes: the official devkits load the result
(``nuscenes.NuScenes(version="v1.0-mini", dataroot=root)``, ``LyftDataset(data_path=root /
"v1.01-train", json_path=root / "v1.01-train/v1.01-train")``), and the info builders, the data
loader, training and evaluation run on it unchanged.

Public API::

    make_synthetic_nuscenes(out_dir, *, num_scenes=10, keyframes_per_scene=40, seed=0, ...) -> root
    make_synthetic_lyft(out_dir, *, num_scenes=10, keyframes_per_scene=40, seed=0, ...) -> root
    make_synthetic_dataset(fmt, out_dir, **same keywords) -> root

The world (road, ego, objects of every class, buildings) lives in :mod:`.world`, the spinning
LiDAR ray-cast against it in :mod:`.lidar`, the formats in :mod:`.writer`. Output is a pure
function of the arguments (``num_workers`` does not change a byte). A finished dataset is marked by
``<root>/.d2_pillars_synthetic.json``; calling again with the same arguments returns at once,
``force=True`` regenerates. A dataset that another ``GENERATOR_VERSION`` wrote with the same
arguments is stale and is regenerated (the new marker is newer than infos built from the old one).
"""

import json
import logging
import multiprocessing
import os
import shutil
import time
from typing import Optional

from d2_pillars.utils.file_io import atomic_open

from .formats import GenerationOptions, validate_spec
from .writer import FORMATS, generate_scene, write_shared_tables, write_tables

__all__ = [
    "make_synthetic_dataset",
    "make_synthetic_nuscenes",
    "make_synthetic_lyft",
    "MARKER_NAME",
]

logger = logging.getLogger(__name__)

MARKER_NAME = ".d2_pillars_synthetic.json"
_INCOMPLETE_NAME = ".d2_pillars_synthetic.incomplete"
# Bump whenever the output for the same arguments changes (2: every scene starts beside a site
# holding every class of its format; 3: vehicles have a lower front, so the LiDAR shows heading).
GENERATOR_VERSION = 3


def _parameters(fmt: str, options: GenerationOptions, version: str, lidar) -> dict:
    return {
        # An identifier, not an import path (the generator's first module name): datasets that
        # are already on disk keep matching it.
        "generator": "d2_pillars.data.datasets.synthetic",
        "generator_version": GENERATOR_VERSION,
        "format": fmt,
        "version": version,
        "num_scenes": options.num_scenes,
        "keyframes_per_scene": options.keyframes_per_scene,
        "seed": options.seed,
        "num_beams": lidar.num_beams,
        "azimuth_steps": lidar.azimuth_steps,
    }


def _is_stale(found, params: dict) -> bool:
    """Whether marker parameters ``found`` are ``params`` written by another generator version."""
    if not isinstance(found, dict) or found.get("generator") != params["generator"]:
        return False
    if found.get("generator_version") == params["generator_version"]:
        return False
    drop = lambda d: {k: v for k, v in d.items() if k != "generator_version"}  # noqa: E731
    return drop(found) == drop(params)


def _scene_job(args):
    fmt, options, root, index = args
    return generate_scene(FORMATS[fmt], options, root, index)


def make_synthetic_dataset(
    fmt: str,
    out_dir: str,
    *,
    num_scenes: int = 10,
    keyframes_per_scene: int = 40,
    seed: int = 0,
    version: Optional[str] = None,
    num_beams: Optional[int] = None,
    azimuth_steps: Optional[int] = None,
    num_workers: int = 1,
    force: bool = False,
) -> str:
    """Generate a synthetic ``fmt`` dataset ("nuscenes" | "lyft") in ``out_dir``; return the root.

    Args:
        num_scenes, keyframes_per_scene: size (nuScenes keyframes are 0.5 s apart with 9 sweeps
            between them; Lyft keyframes 0.2 s apart). nuScenes scenes take the real scene names of
            ``version``'s splits (``v1.0-mini``: at most 10, 8 train + 2 val).
        seed: everything is a deterministic function of the arguments.
        version: nuScenes ``"v1.0-mini"`` (default) or ``"v1.0-trainval"``; Lyft ``"v1.01-train"``.
        num_beams, azimuth_steps: override the LiDAR resolution (tests use small ones).
        num_workers: scenes simulated in parallel processes (the output does not depend on it).
        force: regenerate even if a complete dataset with these arguments exists (one written
            by another generator version with these arguments is regenerated anyway).
    """
    if fmt not in FORMATS:
        raise ValueError(
            f"unknown synthetic dataset format {fmt!r}; choose one of {sorted(FORMATS)}"
        )
    spec = FORMATS[fmt]
    validate_spec(spec)
    options = GenerationOptions(
        num_scenes, keyframes_per_scene, seed, version, num_beams, azimuth_steps
    )
    version, lidar = spec.resolve(options)
    params = _parameters(fmt, options, version, lidar)
    root = os.path.abspath(os.fspath(out_dir))
    marker = os.path.join(root, MARKER_NAME)
    incomplete = os.path.join(root, _INCOMPLETE_NAME)
    tables_dir = spec.tables_path(root, version)

    if os.path.exists(marker):
        with open(marker) as f:
            found = json.load(f).get("parameters")
        if found == params and not force:
            logger.info("Synthetic %s dataset already complete at %s; skipping", fmt, root)
            return root
        if _is_stale(found, params):
            logger.warning(
                "Synthetic %s dataset at %s was written by generator version %s (now %s); "
                "regenerating it",
                fmt,
                root,
                found.get("generator_version"),
                GENERATOR_VERSION,
            )
        elif found != params and not force:
            raise FileExistsError(
                f"{root} holds a synthetic dataset generated with other arguments ({found}); pass "
                f"force=True (--force) to regenerate it, or choose another output folder"
            )
    elif not os.path.exists(incomplete):
        owned = [os.path.join(root, rel.format(version=version)) for rel in spec.owned_dirs]
        found = [p for p in owned if os.path.exists(p)]
        if found:
            raise FileExistsError(
                f"{found[0]} exists and was not written by the synthetic generator (no "
                f"{MARKER_NAME} in {root}); refusing to overwrite what may be a real dataset. "
                f"Choose another output folder."
            )

    os.makedirs(root, exist_ok=True)
    with atomic_open(incomplete, "w") as f:
        json.dump(params, f)
    if os.path.exists(marker):
        os.remove(marker)
    # Remove what an earlier (other-sized or interrupted) run of this generator may have left.
    for rel in spec.owned_dirs:
        path = os.path.join(root, rel.format(version=version))
        if os.path.isdir(path):
            shutil.rmtree(path)

    start = time.perf_counter()
    jobs = [(fmt, options, root, i) for i in range(num_scenes)]
    if num_workers > 1 and num_scenes > 1:
        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        ctx = multiprocessing.get_context(method)
        with ctx.Pool(min(num_workers, num_scenes)) as pool:
            per_scene = pool.map(_scene_job, jobs, chunksize=1)
    else:
        per_scene = [_scene_job(job) for job in jobs]

    tables = {}
    for recs in per_scene:
        for name, rows in recs.items():
            tables.setdefault(name, []).extend(rows)
    stats = tables.pop("_stats")
    tables.update(write_shared_tables(spec, options, root, tables["log"]))
    write_tables(spec, tables_dir, tables)

    points = [p for s in stats for p in s["points_per_sweep"]]
    summary = {
        "parameters": params,
        "scenes": num_scenes,
        "samples": len(tables["sample"]),
        "sample_data": len(tables["sample_data"]),
        "annotations": len(tables["sample_annotation"]),
        "points_per_sweep_mean": float(sum(points) / max(len(points), 1)),
        "seconds": round(time.perf_counter() - start, 2),
    }
    with atomic_open(marker, "w") as f:
        json.dump(summary, f, indent=1)
    os.remove(incomplete)
    logger.info("Synthetic %s dataset written to %s: %s", fmt, root, summary)
    return root


def make_synthetic_nuscenes(
    out_dir: str, *, num_scenes: int = 10, keyframes_per_scene: int = 40, seed: int = 0, **kwargs
) -> str:
    """A synthetic nuScenes dataset (default ``v1.0-mini``) in ``out_dir`` (the devkit dataroot).

    Keywords as :func:`make_synthetic_dataset`. Returns the root.
    """
    return make_synthetic_dataset(
        "nuscenes",
        out_dir,
        num_scenes=num_scenes,
        keyframes_per_scene=keyframes_per_scene,
        seed=seed,
        **kwargs,
    )


def make_synthetic_lyft(
    out_dir: str, *, num_scenes: int = 10, keyframes_per_scene: int = 40, seed: int = 0, **kwargs
) -> str:
    """A synthetic Lyft ``v1.01-train`` dataset under ``out_dir``; returns the root.

    Layout: ``root/v1.01-train/{v1.01-train/*.json, lidar/, maps/}`` (``LyftDataset(data_path=
    root/"v1.01-train", json_path=root/"v1.01-train/v1.01-train")``). Keywords as
    :func:`make_synthetic_dataset`.
    """
    return make_synthetic_dataset(
        "lyft",
        out_dir,
        num_scenes=num_scenes,
        keyframes_per_scene=keyframes_per_scene,
        seed=seed,
        **kwargs,
    )
