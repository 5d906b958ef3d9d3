#!/usr/bin/env python
"""The built-in demo (what `make demo` runs): synthetic data -> train -> devkit evaluation -> BEV.

    python tools/demo.py [--config-file configs/synthetic/pointpillars_regnetx_400mf_fpn_cpu.yaml]
                         [--output-dir output/demo] [--backend torch|onnxruntime] [KEY VALUE ...]

With ``--backend onnxruntime`` the trained model is also exported to ONNX (``OUTPUT_DIR/onnx``)
and evaluated with the exported graph in onnxruntime; the last line is then that evaluation's JSON
(with the torch evaluation's figures beside it).
"""
import argparse
import json

from d2_pillars.engine.demo import DEMO_CONFIG, run_demo

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config-file", default=DEMO_CONFIG)
    parser.add_argument("--output-dir", default="output/demo")
    parser.add_argument(
        "--backend",
        choices=["torch", "onnxruntime"],
        default="torch",
        help="onnxruntime: also export the trained model and evaluate the graph in onnxruntime",
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    args = parser.parse_args()
    summary = run_demo(args.config_file, args.output_dir, args.opts)
    if args.backend == "onnxruntime":
        from d2_pillars.deploy.evaluate import export_and_evaluate

        results, report = export_and_evaluate(args.output_dir)
        metrics = results["nuscenes"]
        print(f"onnxruntime: car AP {metrics['AP-car']:.3f}   mAP {metrics['mAP']:.3f}   "
              f"NDS {metrics['NDS']:.3f}   (export check: max relative difference "
              f"{report.worst_rel_diff:.2g})")  # fmt: skip
        torch_figures = {k: summary[k] for k in ("car_ap", "mAP", "NDS")}
        print(json.dumps({
            "backend": "onnxruntime",
            "car_ap": round(float(metrics["AP-car"]), 4),
            "mAP": round(float(metrics["mAP"]), 4),
            "NDS": round(float(metrics["NDS"]), 4),
            "torch": torch_figures,
            "onnx": report.path,
        }))  # fmt: skip
