#!/usr/bin/env python
"""Build the info files of nuScenes or Lyft with the official devkits (one record per keyframe).

    python tools/create_data.py nuscenes --root datasets/nuscenes --version v1.0-trainval
    python tools/create_data.py nuscenes --root datasets/nuscenes --version v1.0-mini
    python tools/create_data.py lyft --root datasets/lyft --version v1.01-train
    python tools/create_data.py lyft --root datasets/synthetic_lyft --version v1.01-train \\
        --scene-split last20
    python tools/create_data.py lyft --root datasets/lyft --version v1.01-train --check
    python tools/create_data.py custom --root ROOT [--base-config CFG] [--check]

Writes ``{root}/{dataset}_infos_{split}.pkl`` per split (``--out`` changes the folder).
``--check`` only lists the missing or corrupt LiDAR files (keyframes and sweeps) and exits
with status 1 if there are any.

``custom`` (own data, README "Your own LiDAR data"): ROOT/points/<id>.<bin|npy|pcd|ply|las|laz>,
ROOT/labels/<id>.txt (``x y z dx dy dz yaw class``), optional ROOT/splits/{train,val}.txt and
ROOT/dataset.yaml. Reads and checks every file, then writes ROOT/d2_pillars/ (info files,
datasets.json, config.yaml derived from --base-config) and prints a summary table. Every broken
file is listed with its reason, and then nothing is written (exit status 1); ``--check`` writes
nothing in any case.
"""
import argparse
import logging
import sys

from d2_pillars.data.datasets import DATASET_SPECS, check_dataset_files, create_infos
from d2_pillars.engine.own_data import DEFAULT_BASE_CONFIG, create_custom_data


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("dataset", choices=sorted(DATASET_SPECS) + ["custom"])
    parser.add_argument("--root", required=True, help="dataset root (the devkit's dataroot)")
    parser.add_argument(
        "--version",
        default=None,
        help="nuScenes: v1.0-trainval | v1.0-mini | v1.0-test; Lyft: v1.01-train | v1.01-test "
        "(required for both; not used by custom)",
    )
    parser.add_argument(
        "--base-config",
        default=None,
        help=f"custom: the config whose architecture and solver the written config keeps "
        f"(default {DEFAULT_BASE_CONFIG})",
    )
    parser.add_argument(
        "--point-dim",
        type=int,
        default=None,
        help="custom: float32 values per point of the .bin files (default: dataset.yaml "
        "point_dim, else 4)",
    )
    parser.add_argument("--max-sweeps", type=int, default=10, help="previous sweeps per keyframe")
    parser.add_argument("--out", default=None, help="folder of the info files (default: --root)")
    parser.add_argument(
        "--scene-split",
        default="official",
        help="Lyft v1.01-train: 'official' (reference scene lists) or 'last20' (the last 20%% "
        "of the scenes by name are val; for datasets with their own scene names)",
    )
    parser.add_argument(
        "--check", action="store_true", help="only list missing or corrupt LiDAR files"
    )
    parser.add_argument("--quiet", action="store_true", help="no devkit messages / progress bar")
    args = parser.parse_args(argv)
    if args.dataset == "custom":
        return args
    if args.version is None:
        parser.error(f"{args.dataset} needs --version")
    spec = DATASET_SPECS[args.dataset]
    if args.version not in spec.versions:
        parser.error(f"{args.dataset} versions are {', '.join(spec.versions)}; got {args.version}")
    return args


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.dataset == "custom":
        return create_custom_data(
            args.root,
            base_config=args.base_config,
            check=args.check,
            point_dim=args.point_dim,
            progress=not args.quiet,
        )
    spec = DATASET_SPECS[args.dataset]
    if args.check:
        n, problems = check_dataset_files(spec, args.root, args.version, verbose=not args.quiet)
        for path, problem in problems:
            print(f"{problem}: {path}")
        print(f"checked {n} LiDAR files of {args.dataset} {args.version}: {len(problems)} bad")
        if problems:
            print(
                "Fix: restore missing or corrupt files from the dataset archives; a corrupt "
                "file's partial last point can also be cut off with `truncate -s SIZE FILE` "
                "(SIZE = a multiple of 4 x load_dim bytes). Then run --check again."
            )
        return 1 if problems else 0
    written = create_infos(
        spec,
        args.root,
        args.version,
        max_sweeps=args.max_sweeps,
        out_dir=args.out,
        scene_split=args.scene_split,
        progress=not args.quiet,
    )
    for split, path in written.items():
        print(f"{split}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
