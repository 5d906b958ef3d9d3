#!/usr/bin/env python
"""Train or evaluate a d2_pillars model (detectron2's train_net CLI).

    python tools/train_net.py --config-file configs/nuscenes/pointpillars_regnetx_400mf_fpn.yaml \
        --num-gpus 8
    python tools/train_net.py --config-file CFG --eval-only MODEL.WEIGHTS output/model_final.pth
    python tools/train_net.py --config-file CFG --eval-only --results results_nusc.json
    python tools/train_net.py --config-file CFG --resume          # continue an interrupted run
    python tools/train_net.py --config-file OUT/config.yaml --eval-only   # the ONNX graph in
        # onnxruntime (OUT from tools/deploy/export_model.py: MODEL.BACKEND onnxruntime)
"""
import sys

import d2_pillars.deploy  # noqa: F401  (registers MODEL.BACKEND onnxruntime)
from d2_pillars.engine import DeviceUnavailableError, argument_parser, check_device, launch, main

if __name__ == "__main__":
    args = argument_parser().parse_args()
    print("Command Line Args:", args)
    try:
        check_device(args)  # before launch: one sentence, not a traceback from every process
    except (DeviceUnavailableError, FileNotFoundError, KeyError, ValueError) as e:
        sys.exit(f"error: {e.args[0] if e.args else e}")
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
