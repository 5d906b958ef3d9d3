#!/usr/bin/env python3
"""Convert an mmdetection3d PointPillars checkpoint (1.x or 0.x convention) for d2_pillars.

    python tools/convert_mmdet3d.py hv_pointpillars_regnet-400mf_fpn_sbn-all_4x8_2x_nus-3d.pth \\
        pp_regnetx_400mf_fpn_nus.pth \\
        --config-file configs/nuscenes/pointpillars_regnetx_400mf_fpn.yaml

Prints what went where; exits with status 1, writing nothing, when a tensor has no place in the
config's model or a shape differs. Evaluate the result with
``tools/train_net.py --config-file CFG --eval-only MODEL.WEIGHTS DST``.
"""
import argparse
import sys

from d2_pillars.checkpoint.mmdet3d_converter import (
    CONVENTIONS,
    MMDet3DCheckpointError,
    convert_mmdet3d_file,
    format_mmdet3d_report,
)
from d2_pillars.engine import build_pillars_model, load_config


def get_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("src", metavar="SRC", help="mmdetection3d checkpoint (.pth)")
    parser.add_argument("dst", metavar="DST", help="output detectron2 checkpoint (.pth)")
    parser.add_argument(
        "--config-file",
        required=True,
        metavar="CFG",
        help="the d2_pillars config of the same model (names, shapes, anchors)",
    )
    parser.add_argument(
        "--source-convention",
        default="auto",
        choices=CONVENTIONS,
        help="box convention of SRC; auto reads meta['mmdet3d_version'] (< 1.0: 0.x)",
    )
    parser.add_argument("--verbose", action="store_true", help="list every mapped key")
    parser.add_argument(
        "opts", nargs="*", default=[], help="config overrides after the options: KEY VALUE ..."
    )
    return parser


def main(argv=None):
    args = get_parser().parse_intermixed_args(argv)
    try:
        cfg = load_config(
            args.config_file, ["MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu"] + args.opts
        )
        report = convert_mmdet3d_file(
            args.src,
            args.dst,
            build_pillars_model(cfg),
            convention=args.source_convention,
            config_name=args.config_file,
        )
    except (MMDet3DCheckpointError, FileNotFoundError, KeyError, ValueError) as e:
        print(f"convert_mmdet3d: error: {e}", file=sys.stderr)
        return 1
    print(format_mmdet3d_report(report, verbose=args.verbose))
    print(f"Wrote {args.dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
