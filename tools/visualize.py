#!/usr/bin/env python
"""Show samples of a registered dataset: points, ground-truth and predicted boxes.

    # interactive Open3D window (N / P: next / previous sample, Q: quit), needs a display
    python tools/visualize.py --dataset nuscenes_mini_val --num 10
    # headless PNGs (BEV + 3D) of samples 0 and 5, predictions from a model
    python tools/visualize.py --dataset nuscenes_val --index 0 5 --save out/vis \\
        --config-file configs/nuscenes/pointpillars_regnetx_400mf_fpn.yaml \\
        MODEL.WEIGHTS output/model_final.pth
    # predictions from a results file (nuScenes JSON, Lyft JSON or Kaggle CSV)
    python tools/visualize.py --dataset lyft_val --num 4 --results results.csv --save out/vis

Trailing KEY VALUE pairs override config keys (as in train_net.py); with
``MODEL.BACKEND onnxruntime MODEL.ONNX.PATH DIR`` (or ``--config-file DIR/config.yaml`` of
tools/deploy/export_model.py) the predictions come from the exported graph in onnxruntime.
"""
import argparse
import logging
import sys

import d2_pillars.deploy  # noqa: F401  (registers MODEL.BACKEND onnxruntime)
from d2_pillars.engine.visualize import visualize


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dataset", required=True, help="registered dataset name")
    pick = parser.add_mutually_exclusive_group()
    pick.add_argument("--index", type=int, nargs="+", help="sample indices (negative: from end)")
    pick.add_argument("--num", type=int, help="the first N samples")
    parser.add_argument("--config-file", default="", metavar="CFG", help="model config")
    parser.add_argument("--results", default="", metavar="FILE", help="results file instead")
    parser.add_argument("--score-thresh", type=float, default=0.3)
    parser.add_argument("--color-by", choices=["height", "time_lag"], default="height")
    parser.add_argument("--save", default="", metavar="DIR", help="write PNGs here (headless)")
    parser.add_argument("--size", type=int, default=1024, help="image side in pixels")
    parser.add_argument("--mode", choices=["bev", "3d", "both"], default="both")
    parser.add_argument(
        "--range", type=float, nargs=4, metavar=("X_MIN", "Y_MIN", "X_MAX", "Y_MAX"),
        help="BEV range in meters (default: the config's POINT_CLOUD_RANGE, else +-50 / +-80 m)",
    )  # fmt: skip
    parser.add_argument("--sweeps", type=int, help="sweeps merged per keyframe (default 10)")
    parser.add_argument(
        "--backend", choices=["auto", "filament", "legacy", "xvfb"], default="auto",
        help="headless 3D renderer (auto: the first that works)",
    )  # fmt: skip
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    args = parser.parse_args(argv)
    if args.opts and not args.config_file:
        parser.error("config overrides (e.g. MODEL.WEIGHTS) need --config-file")
    if args.config_file and args.results:
        parser.error("--config-file and --results are alternatives")
    return args


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        paths = visualize(
            args.dataset,
            indices=args.index,
            num=args.num,
            config_file=args.config_file,
            opts=args.opts,
            results_file=args.results,
            score_thresh=args.score_thresh,
            color_by=args.color_by,
            save_dir=args.save,
            size=args.size,
            mode=args.mode,
            bev_range=args.range,
            num_sweeps=args.sweeps,
            backend=args.backend,
        )
    except (KeyError, ValueError, IndexError, RuntimeError, FileNotFoundError) as e:
        print(f"error: {e.args[0] if e.args else e}", file=sys.stderr)  # the message, no traceback
        return 2
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
