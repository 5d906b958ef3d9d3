#!/usr/bin/env python
"""Boxes for point-cloud files: any model, any common format, one command.

    python tools/predict.py --config-file ROOT/d2_pillars/config.yaml \\
        --input scan.pcd cloud.ply folder/ --output OUT MODEL.WEIGHTS model_final.pth
    python tools/predict.py --config-file configs/nuscenes/pointpillars_regnetx_400mf_fpn.yaml \\
        --input survey.laz --output OUT MODEL.WEIGHTS nus.pth MODEL.DEVICE cpu --score-thresh 0.3
    python tools/predict.py --config-file DIR/config.yaml --input f.bin --output OUT \\
        MODEL.BACKEND onnxruntime MODEL.ONNX.PATH DIR

Inputs: .bin (float32, --point-dim values per point), .npy, .pcd (ascii / binary /
binary_compressed), .ply, .las / .laz; folders are expanded to their point files. Features the
model wants but a file lacks (e.g. the sweep time lag of the nuScenes models) are 0. Writes
OUT/<id>.txt (``x y z dx dy dz yaw class score`` a line: the label line plus a score, in the
file's coordinates), OUT/predictions.json (boxes, classes, scores, and the offset subtracted from
a georeferenced LAS) and OUT/<id>.png (BEV image; --no-images skips them). Trailing KEY VALUE
pairs override config keys, as in train_net.py.
"""
import argparse
import logging
import sys

from d2_pillars.deploy import build_predictor  # also registers MODEL.BACKEND onnxruntime
from d2_pillars.engine import load_config
from d2_pillars.engine.predict_files import predict_files


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", required=True, metavar="CFG", help="model config")
    parser.add_argument(
        "--input", required=True, nargs="+", metavar="FILE_OR_DIR", help="point files / folders"
    )
    parser.add_argument("--output", required=True, metavar="OUT", help="output folder")
    parser.add_argument(
        "--score-thresh", type=float, default=None, help="keep boxes with a score >= this"
    )
    parser.add_argument("--no-images", action="store_true", help="no BEV PNG per file")
    parser.add_argument(
        "--point-dim",
        type=int,
        default=None,
        help="float32 values per point of .bin files (default: the own-data dataset.yaml, else 4)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("opts", nargs="*", help="config overrides: KEY VALUE ...")
    # Intermixed: options may follow the KEY VALUE pairs (--output OUT K V --score-thresh 0.3).
    return parser.parse_intermixed_args(argv)


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = load_config(args.config_file, args.opts)
    results = predict_files(
        cfg,
        args.input,
        args.output,
        predictor_factory=build_predictor,
        score_thresh=args.score_thresh,
        images=not args.no_images,
        point_dim=args.point_dim,
        progress=not args.quiet,
    )
    boxes = sum(len(r["scores"]) for r in results.values())
    print(f"{len(results)} files, {boxes} boxes: {args.output}/<id>.txt, predictions.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
