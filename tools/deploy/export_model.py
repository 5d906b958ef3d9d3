#!/usr/bin/env python
"""Export a d2_pillars model to ONNX and check it with onnxruntime (detectron2's tools/deploy).

    python tools/deploy/export_model.py \\
        --config-file configs/nuscenes/pointpillars_regnetx_400mf_fpn.yaml \\
        --output output/onnx MODEL.WEIGHTS output/model_final.pth

Writes OUTPUT/model.onnx (pillars -> raw head outputs, opset 18, dynamic number of pillars),
OUTPUT/config.yaml (the config with MODEL.BACKEND onnxruntime and MODEL.ONNX.PATH set) and
OUTPUT/export.json. The graph is run with onnxruntime on a real frame (a synthetic nuScenes
keyframe from the built-in generator, or --dataset NAME --index I) and compared with eager
PyTorch; the export fails (exit status 1) when an output differs by more than --rtol of its
largest value. Trailing KEY VALUE pairs override config keys.

With --quantize int8 it also writes OUTPUT/model_int8.onnx, a static int8 graph calibrated on
--calibration-frames frames of --calibration-dataset (default the config's DATASETS.TRAIN[0]),
and OUTPUT/config.yaml now runs that graph (MODEL.BACKEND --int8-backend, default openvino; the
float graph's config is OUTPUT/config_float.yaml). The int8 graph is then checked against the
float model on --check-frames held-out frames of --check-dataset (default DATASETS.TEST[0]):
each float box scoring >= --check-min-score must have an int8 box of its class within
--check-max-distance m (one to one), for at least --check-min-matched of them, and no matched pair's
scores may differ by more than --check-max-score-diff; otherwise the export fails (exit status 1).

    python tools/deploy/export_model.py --config-file output/demo/config.yaml \
        --output output/demo/int8 --quantize int8 MODEL.WEIGHTS output/demo/model_final.pth
"""
import argparse
import logging
import os
import sys

from d2_pillars.deploy import (
    OPSET,
    DeployDependencyError,
    ExportCheckError,
    NotExportableError,
    export_onnx,
    format_report,
)
from d2_pillars.deploy.matching import MatchTolerance
from d2_pillars.deploy.quantize import (
    DEFAULT_FLOAT_MODULES,
    INT8_BACKENDS,
    QUANTIZE_MODES,
    export_int8,
)
from d2_pillars.engine import load_config


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", required=True, metavar="CFG")
    parser.add_argument("--output", required=True, metavar="DIR", help="output folder")
    parser.add_argument("--format", choices=["onnx"], default="onnx")
    parser.add_argument("--opset", type=int, default=OPSET, help=f"ONNX opset (default {OPSET})")
    parser.add_argument("--rtol", type=float, default=1e-4, help="check tolerance (relative)")
    parser.add_argument(
        "--pillar-net",
        choices=["bucketed", "dense"],
        default="bucketed",
        help="pillar-net layout in the graph: pillars grouped by point count into buckets of "
        "2, 4, 8, ... slots (default) or one (V, M, C) tensor (one input; more work)",
    )
    parser.add_argument("--dataset", default="", help="check on a sample of this dataset")
    parser.add_argument("--index", type=int, default=0, help="sample index in --dataset")
    q = parser.add_argument_group("int8 quantization (--quantize int8)")
    tol = MatchTolerance()
    q.add_argument("--quantize", choices=QUANTIZE_MODES, default="none")
    q.add_argument(
        "--int8-backend",
        choices=INT8_BACKENDS,
        default=INT8_BACKENDS[0],
        help="MODEL.BACKEND of the int8 config.yaml and of the check (default: %(default)s, "
        "measured faster on the int8 graph)",
    )
    q.add_argument("--calibration-dataset", default="", help="default: DATASETS.TRAIN[0]")
    q.add_argument("--calibration-frames", type=int, default=32, help="default: %(default)s")
    q.add_argument("--check-dataset", default="", help="held-out frames; default DATASETS.TEST[0]")
    q.add_argument("--check-frames", type=int, default=8, help="default: %(default)s")
    q.add_argument(
        "--check-min-score",
        type=float,
        default=tol.min_score,
        help="float boxes scoring below this are not checked (default %(default)s)",
    )
    q.add_argument(
        "--check-max-distance",
        type=float,
        default=tol.max_center_distance,
        help="largest BEV centre distance (m) of a matched float / int8 pair (default %(default)s)",
    )
    q.add_argument(
        "--check-min-matched",
        type=float,
        default=tol.min_matched,
        help="refused below this share of checked float boxes matched (default %(default)s)",
    )
    q.add_argument(
        "--check-max-score-diff",
        type=float,
        default=tol.max_score_diff,
        help="refused when the 95th percentile of the matched pairs' |score differences| is "
        "above this (default %(default)s)",
    )
    q.add_argument(
        "--float-modules",
        nargs="+",
        default=list(DEFAULT_FLOAT_MODULES) or ["none"],
        metavar="MODULE",
        help="network modules whose convolutions (pillar_net: linear layers) stay in float: "
        "pillar_net, scatter, backbone, head or dotted submodules (head.conv_reg, "
        "head.conv_cls, head.conv_dir); 'none' (default): quantize every convolution and the "
        "pillar net's linear layers after its first",
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    return parser.parse_args(argv)


def _dataset_sample(cfg, name, index):
    from detectron2.data import DatasetCatalog

    import d2_pillars.data  # noqa: F401  (registers the default dataset names)
    from d2_pillars.data import PointCloudMapper

    return PointCloudMapper(cfg, is_train=False)(DatasetCatalog.get(name)[index])


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config(args.config_file, args.opts)
        sample = _dataset_sample(cfg, args.dataset, args.index) if args.dataset else None
        if args.quantize == "int8":
            tolerance = MatchTolerance(
                min_score=args.check_min_score,
                max_center_distance=args.check_max_distance,
                min_matched=args.check_min_matched,
                max_score_diff=args.check_max_score_diff,
            )
            report = export_int8(
                cfg,
                args.output,
                backend=args.int8_backend,
                calibration_dataset=args.calibration_dataset or None,
                calibration_frames=args.calibration_frames,
                check_dataset=args.check_dataset or None,
                check_frames=args.check_frames,
                tolerance=tolerance,
                float_modules=[m for m in args.float_modules if m != "none"],
                sample=sample,
                rtol=args.rtol,
                opset=args.opset,
                pillar_net=args.pillar_net,
            )
        else:
            report = export_onnx(
                cfg,
                args.output,
                sample=sample,
                rtol=args.rtol,
                opset=args.opset,
                pillar_net=args.pillar_net,
            )
    except (DeployDependencyError, NotExportableError, ExportCheckError, KeyError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.quantize == "int8":
        print(
            f"{report.path}: int8 ({report.quantized_nodes} convolutions and linear layers "
            f"quantized, {len(report.float_nodes)} kept in float), calibrated on "
            f"{report.calibration_frames} "
            f"frames of {report.calibration_dataset} in {report.quantize_seconds:.1f} s"
        )
        print(report.summary())
        print(
            f"config: {os.path.join(args.output, 'config.yaml')} (MODEL.BACKEND {report.backend})"
        )
        return 0
    print(format_report(report))
    print(
        f"{report.path}: opset {report.opset}, checked with onnxruntime on "
        f"{' and '.join(str(v) for v in report.num_pillars)} pillars: max relative difference "
        f"{report.worst_rel_diff:.3g} <= {report.rtol:g} (export {report.export_seconds:.1f} s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
