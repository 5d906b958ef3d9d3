#!/usr/bin/env python3
"""Convert an ImageNet RegNet checkpoint (pycls .pyth or torchvision regnet_*) for d2_pillars.

    python tools/convert_regnet.py RegNetX-400MF_dds_8gpu.pyth regnetx_400mf_bev.pth \\
        --config-file configs/nuscenes/pointpillars_regnetx_400mf_fpn.yaml

Prints what was mapped, dropped and left at initialisation; exits with status 1 and a message
naming the difference when the checkpoint does not fit the config's RegNet.
"""
import argparse
import sys

from d2_pillars.checkpoint.regnet_converter import convert_regnet_file, format_report
from d2_pillars.checkpoint.regnet_source import SOURCE_FORMATS, RegNetCheckpointError


def get_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("src", metavar="SRC", help="pycls .pyth or torchvision RegNet state dict")
    parser.add_argument("dst", metavar="DST", help="output detectron2 checkpoint (.pth)")
    parser.add_argument("--format", default="auto", choices=("auto",) + SOURCE_FORMATS)
    parser.add_argument(
        "--config-file",
        default=None,
        metavar="CFG",
        help="d2_pillars config whose model gives the target names and shapes (recommended)",
    )
    parser.add_argument(
        "--prefix",
        default=None,
        help="RegNet prefix in the model (default: found in the config's model; without a "
        "config 'backbone.bottom_up.')",
    )
    parser.add_argument("--verbose", action="store_true", help="list every mapped key")
    parser.add_argument(
        "opts", nargs="*", default=[], help="config overrides after the options: KEY VALUE ..."
    )
    return parser


def main(argv=None):
    args = get_parser().parse_intermixed_args(argv)
    try:
        report = convert_regnet_file(
            args.src,
            args.dst,
            fmt=args.format,
            config_file=args.config_file,
            opts=args.opts,
            prefix=args.prefix,
        )
    except (RegNetCheckpointError, FileNotFoundError, ValueError) as e:
        print(f"convert_regnet: error: {e}", file=sys.stderr)
        return 1
    print(format_report(report, verbose=args.verbose))
    if args.config_file is None:
        print("No --config-file: names and shapes were not checked against a model.")
    print(f"Wrote {args.dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
