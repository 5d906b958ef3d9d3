#!/usr/bin/env python
"""The built-in demo (what `make demo` runs): synthetic data -> train -> devkit evaluation -> BEV.

    python tools/demo.py [--config-file configs/synthetic/pointpillars_regnetx_400mf_fpn_cpu.yaml]
                         [--output-dir output/demo] [KEY VALUE ...]
"""
import argparse

from d2_pillars.engine.demo import DEMO_CONFIG, run_demo

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config-file", default=DEMO_CONFIG)
    parser.add_argument("--output-dir", default="output/demo")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    args = parser.parse_args()
    run_demo(args.config_file, args.output_dir, args.opts)
