#!/usr/bin/env python
"""Write a synthetic nuScenes or Lyft dataset in the exact on-disk format the official SDKs load.

A smoke test of the whole pipeline (info creation, training, evaluation) before downloading the
real data:

    python tools/make_synthetic_dataset.py --format nuscenes --out datasets/synthetic_nuscenes
    python tools/make_synthetic_dataset.py --format lyft --out datasets/synthetic_lyft
    python tools/make_synthetic_dataset.py --format custom --out datasets/synthetic_custom

nuScenes: ``v1.0-mini`` tables with the real mini scene names (8 train / 2 val), keyframes at 2 Hz
with 9 sweeps between them. Lyft: ``v1.01-train`` under ``OUT/v1.01-train``. Re-running with the
same arguments does nothing; ``--force`` regenerates.
"""
import argparse
import json
import logging
import os
import time

from d2_pillars.synthetic import MARKER_NAME, make_synthetic_custom, make_synthetic_dataset


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--format", required=True, choices=("nuscenes", "lyft", "custom"))
    parser.add_argument("--out", required=True, help="output folder (the dataset root)")
    parser.add_argument("--scenes", type=int, default=10, help="number of scenes")
    parser.add_argument(
        "--keyframes",
        type=int,
        default=None,
        help="keyframes (samples) per scene (default 40; custom: 20)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--version", default=None, help="nuScenes: v1.0-mini (default) or v1.0-trainval"
    )
    parser.add_argument("--beams", type=int, default=None, help="override the LiDAR beam count")
    parser.add_argument(
        "--azimuth-steps", type=int, default=None, help="override the firings per revolution"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=min(2, os.cpu_count() or 1),
        help="scenes generated in parallel (the output does not depend on it)",
    )
    parser.add_argument("--force", action="store_true", help="regenerate an existing dataset")
    args = parser.parse_args()

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    start = time.perf_counter()
    if args.format == "custom":
        root = make_synthetic_custom(
            args.out,
            num_scenes=args.scenes,
            keyframes_per_scene=args.keyframes or 20,
            seed=args.seed,
            num_beams=args.beams,
            azimuth_steps=args.azimuth_steps,
            force=args.force,
        )
        print(json.dumps({"root": root, "seconds": round(time.perf_counter() - start, 2)}))
        return
    root = make_synthetic_dataset(
        args.format,
        args.out,
        num_scenes=args.scenes,
        keyframes_per_scene=args.keyframes or 40,
        seed=args.seed,
        version=args.version,
        num_beams=args.beams,
        azimuth_steps=args.azimuth_steps,
        num_workers=args.workers,
        force=args.force,
    )
    with open(os.path.join(root, MARKER_NAME)) as f:
        summary = json.load(f)
    summary["wall_seconds_this_call"] = round(time.perf_counter() - start, 2)
    summary["root"] = root
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
