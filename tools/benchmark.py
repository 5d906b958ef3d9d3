#!/usr/bin/env python
"""Benchmarks of d2_pillars; each prints a table and, last, one JSON line of its figures.

    python tools/benchmark.py ops                       # voxelization, rotated IoU, NMS
    python tools/benchmark.py data  --config-file ...   # mapper keyframes/s per worker
    python tools/benchmark.py model --config-file ...   # per-stage latency, params, FLOPs
    python tools/benchmark.py e2e   --config-file ...   # end-to-end vs dense latency, training
"""
import argparse
import importlib

SUBCOMMANDS = ("ops", "data", "model", "e2e")


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    modules = {}
    for name in SUBCOMMANDS:
        module = importlib.import_module(f"d2_pillars.benchmark.{name}")
        modules[name] = module
        module.add_arguments(sub.add_parser(name, help=module.__doc__.splitlines()[0]))
    args = parser.parse_args()
    modules[args.command].main(args)


if __name__ == "__main__":
    main()
