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
"""
import argparse
import logging
import sys

from d2_pillars.deploy import (
    OPSET,
    DeployDependencyError,
    ExportCheckError,
    NotExportableError,
    export_onnx,
    format_report,
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
        report = export_onnx(
            cfg,
            args.output,
            sample=sample,
            rtol=args.rtol,
            opset=args.opset,
            pillar_net=args.pillar_net,
        )
    except (DeployDependencyError, NotExportableError, ExportCheckError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(format_report(report))
    print(
        f"{report.path}: opset {report.opset}, checked with onnxruntime on "
        f"{' and '.join(str(v) for v in report.num_pillars)} pillars: max relative difference "
        f"{report.worst_rel_diff:.3g} <= {report.rtol:g} (export {report.export_seconds:.1f} s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
