"""End-to-end inference latency against the dense network's own cost, and training throughput.

On one 10-sweep nuScenes-size frame (about 350,000 points) of the synthetic nuScenes dataset
(``--root`` or ``$D2_PILLARS_DATASETS/synthetic_nuscenes``, generated with the demo's arguments
when missing), in inference mode:

- every stage of :class:`PillarsPredictor`: loading (keyframe + sweeps, range filter), voxelization,
  batching, pillar net, scatter, backbone (bottom-up), neck, head (convolutions), post-processing
  (decoding, per-class rotated NMS, Instances);
- the end-to-end latency of ``PillarsPredictor(cfg)(dataset_dict)`` (record in, Instances out).

The weights are random (or ``MODEL.WEIGHTS``). By default the class-logit bias is set to 0 so that
every class of every candidate scores about 0.5, above ``SCORE_THRESH_TEST``: the post-processing
then works at full load (``NMS_PRE`` candidates per level x all classes into the NMS, as a
trained model on a busy frame at most). ``--load prior`` keeps the initial bias instead (almost
nothing passes the threshold, the post-processing is nearly free).

Then, in training mode, iterations of ``--train-batch`` mapped training samples (forward, losses,
backward, AdamW step with gradient clipping, and ``SOLVER.AMP.ENABLED``'s autocast and loss scaling:
the per-iteration trainer of :class:`PillarsTrainer`) and the peak memory of
those iterations (CUDA: ``torch.cuda.max_memory_allocated``; CPU: the process's peak resident set,
``VmHWM`` of ``/proc/self/status`` reset before training, or ``ru_maxrss`` where it cannot be
reset); and the keyframes/s of one data-loader worker (the training mapper in this process with
one torch thread).

Targets (each printed as a ratio with PASS/FAIL):

- end-to-end latency <= 1.15 x (backbone + neck + head) latency;
- post-processing at full load <= 0.5 s (on the CPU);
- one loader worker's keyframes/s >= 2 x the model's training keyframes/s;
- on CUDA with ``SOLVER.AMP.ENABLED True``: training peak memory <= 8.6 GB (the target is set for
  the RegNetX-400MF-FPN nuScenes config at ``--train-batch 4``).

Every time is the median of ``--repeats`` runs after warm-up, as wall time and as this process's
CPU time (all its threads; on a shared machine the two tell contention from cost), with the load
average. The last output line is one JSON object of the figures (seconds).
"""

import argparse
import functools
import logging
import numpy as np
import os
import statistics
import time
import torch

from ..data.datasets import info_path, load_dataset_dicts
from ..data.datasets.register import default_datasets_root
from .common import (
    NUSCENES_VERSION,
    PrecomputedBottomUp,
    has_nuscenes_dataset,
    load_stage,
    print_json,
    print_table,
    resolve_config_file,
    update_nuscenes_infos,
)
from .measure import ModuleClock, Timer
from .training import benchmark_loader, benchmark_training

__all__ = ["add_arguments", "main", "prepare_dataset", "TARGETS"]

logger = logging.getLogger(__name__)

DEFAULT_CONFIG = "configs/nuscenes/pointpillars_regnetx_400mf_fpn.yaml"

# The targets of the issue "Speed and memory".
TARGETS = {
    "e2e_over_dense_max": 1.15,
    "post_processing_s_max": 0.5,
    "loader_over_train_min": 2.0,
    "train_peak_mem_gb_cuda_amp_max": 8.6,
    # the issue "Fast CPU deployment": the int8 graph end to end vs eager torch (same threads),
    # and per 10-sweep nuScenes frame on 2 threads of an AMD EPYC (checked on the CPU)
    "int8_over_torch_e2e_max": 0.30,
    "int8_e2e_s_max": 0.30,
}


def add_arguments(parser: argparse.ArgumentParser):
    parser.add_argument("--config-file", default=DEFAULT_CONFIG, help="model config")
    parser.add_argument(
        "--root",
        default=None,
        help="synthetic nuScenes root (default: $D2_PILLARS_DATASETS/synthetic_nuscenes, "
        "generated with the demo's arguments when missing)",
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per figure (median)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs before timing")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (0: the number of CPUs this process may use). Default 1: "
        "on a shared, loaded machine more threads measure the contention, not the cost",
    )
    parser.add_argument("--train-batch", type=int, default=4, help="samples per training iteration")
    parser.add_argument("--train-repeats", type=int, default=3, help="timed training iterations")
    parser.add_argument("--train-warmup", type=int, default=1, help="untimed training iterations")
    parser.add_argument("--loader-samples", type=int, default=10, help="timed loader keyframes")
    parser.add_argument(
        "--load",
        choices=("full", "prior"),
        default="full",
        help="post-processing load: 'full' (class bias 0, every candidate above the score "
        "threshold) or 'prior' (the initial class bias)",
    )
    parser.add_argument(
        "--backend",
        choices=("torch", "onnxruntime", "openvino"),
        default="torch",
        help="onnxruntime / openvino: also export the same model to ONNX (checked on the frame) "
        "and time it in that runtime with the same threads, side by side with eager torch",
    )
    parser.add_argument(
        "--quantize",
        choices=("none", "int8"),
        default="none",
        help="with --backend onnxruntime / openvino: int8: time the calibrated int8 graph of "
        "export_model.py --quantize int8 (its check against the float model is reported)",
    )
    parser.add_argument(
        "--calibration-frames",
        type=int,
        default=8,
        help="with --quantize int8: training frames of the dataset to calibrate on",
    )
    parser.add_argument(
        "--openvino-precision",
        choices=("f32", "bf16"),
        default="f32",
        help="with --backend openvino: MODEL.OPENVINO.INFERENCE_PRECISION (the float operations)",
    )
    parser.add_argument(
        "--onnx-pillar-net",
        choices=("bucketed", "dense"),
        default="bucketed",
        help="with --backend onnxruntime / openvino: the pillar-net formulation in the graph",
    )
    parser.add_argument("--skip-train", action="store_true", help="inference figures only")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also print torch.profiler's top operators of one end-to-end inference",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")


def _load_cfg(args):
    from ..engine import load_config

    opts = list(args.opts or ())
    cfg = load_config(resolve_config_file(args.config_file), opts)
    cfg.MODEL.DEVICE = args.device
    if "MODEL.WEIGHTS" not in opts[0::2] and cfg.MODEL.WEIGHTS:
        # Timings do not depend on the weights: a config's default (e.g. the RegNet configs'
        # ImageNet URL) is not fetched; pass MODEL.WEIGHTS explicitly to time given weights.
        logger.info(
            "Random weights (the config's MODEL.WEIGHTS %s is not loaded)", cfg.MODEL.WEIGHTS
        )
        cfg.MODEL.WEIGHTS = ""
    return cfg


def prepare_dataset(root, max_sweeps=10):
    """The synthetic nuScenes dataset under ``root``, generated with the demo's arguments when
    ``root`` holds no dataset; info files built when missing or older than the data."""
    from ..engine.demo import prepare_synthetic_nuscenes

    if not has_nuscenes_dataset(root):
        logger.warning("Generating the synthetic nuScenes dataset in %s (a few minutes)", root)
        prepare_synthetic_nuscenes(root, max_sweeps=max_sweeps)
        return root
    # an existing dataset (synthetic of any size, or a real v1.0-mini) is used as it is
    update_nuscenes_infos(root, ("mini_train", "mini_val"), max_sweeps=max_sweeps)
    return root


def _dataset_dicts(root, split):
    return load_dataset_dicts(
        info_path(root, "nuscenes", split),
        root,
        dataset="nuscenes",
        version=NUSCENES_VERSION,
        split=split,
    )


def _full_sweep_dicts(dicts, num_sweeps):
    return [d for d in dicts if len(d["sweeps"]) >= num_sweeps] or dicts


def _spread(total, n):
    """``n`` indices spread evenly over ``range(total)``."""
    return sorted({int(i) for i in np.linspace(0, total - 1, min(n, total)).round()})


def _warm_page_cache(records):
    for d in records:
        for p in [d["lidar_path"]] + [s["lidar_path"] for s in d["sweeps"]]:
            with open(p, "rb") as f:
                f.read()


# --------------------------------------------------------------------------------------------
# inference
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def benchmark_inference(predictor, record, timer, profile=False):
    """Per-stage and end-to-end latency of ``predictor`` on one dataset dict."""
    model, mapper = predictor.model, predictor.mapper
    figures = {}

    load = load_stage(mapper, record)
    timer("loading", load)
    raw, points = load()
    points_t = torch.from_numpy(points)
    timer("voxelization", lambda: mapper.voxelizer(points_t))
    # the whole test-time mapper (loading + voxelization + its bookkeeping), for information
    timer("mapper", lambda: mapper(record))
    figures["mapper_s"], figures["mapper_cpu_s"] = timer.wall["mapper"], timer.cpu["mapper"]
    inputs = mapper(record)
    figures["points"] = int(raw.shape[0])
    figures["points_in_range"] = int(points.shape[0])
    figures["pillars"] = int(inputs["voxels"].shape[0])

    timer("batching", lambda: model.batch_voxels([inputs]))
    voxels, num_points, coords = model.batch_voxels([inputs])
    timer("pillar_net", lambda: model.pillar_encoder(voxels, num_points, coords))
    features = model.pillar_encoder(voxels, num_points, coords)
    timer("scatter", lambda: model.scatter(features, coords, 1))
    canvas = model.scatter(features, coords, 1)

    backbone = model.backbone
    bottom_up = getattr(backbone, "bottom_up", None)
    if bottom_up is not None:
        timer("backbone", lambda: bottom_up(canvas))
        backbone.bottom_up = PrecomputedBottomUp(bottom_up(canvas))
        try:
            timer("neck", lambda: backbone(canvas))
        finally:
            backbone.bottom_up = bottom_up
    else:
        timer("backbone", lambda: backbone(canvas))
        timer.wall["neck"], timer.cpu["neck"] = 0.0, 0.0
    maps = backbone(canvas)
    head_inputs = [maps[f] for f in model.head_in_features]
    timer("head", lambda: model.head(head_inputs))
    predictions = model.head(head_inputs)
    grid_sizes = [tuple(f.shape[-2:]) for f in head_inputs]
    image_size = tuple(canvas.shape[-2:])

    def post():
        (inst,) = model.head.inference(grid_sizes, *predictions, image_size)
        return inst.to("cpu")

    timer("post_processing", post)
    scores = torch.cat([p.float().sigmoid() for p in predictions[0]], dim=1)[0]
    nms_pre = model.head.nms_pre
    level_sizes = [p.shape[1] for p in predictions[0]]
    candidates = sum(min(n, nms_pre) if nms_pre > 0 else n for n in level_sizes)
    # NMS input: candidates kept by the per-level top-k, and the fraction of all (anchor, class)
    # scores above the threshold (1.0 at full load)
    figures["post_candidates"] = int(candidates)
    figures["post_pairs_above_threshold_fraction"] = round(
        float((scores > model.head.score_thresh).float().mean()), 4
    )
    figures["detections"] = len(post())

    # The end-to-end runs, each split into its dense part (backbone + neck + head forward, timed
    # by hooks inside the same run) and the rest: the ratio of each run is immune to the load
    # changing between separately timed stages.
    clock = ModuleClock([model.backbone, model.head], timer.device)
    runs = []

    def e2e():
        clock.reset()
        t0, c0 = time.perf_counter(), time.process_time()
        predictor(record)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        runs.append((wall, cpu, clock.wall, clock.cpu))

    try:
        timer("e2e", e2e)
    finally:
        clock.remove()
    runs = runs[timer.warmup :]
    figures["e2e_in_run_dense_s"] = statistics.median(r[2] for r in runs)
    figures["e2e_in_run_dense_cpu_s"] = statistics.median(r[3] for r in runs)
    figures["e2e_over_dense"] = statistics.median(r[0] / r[2] for r in runs)
    figures["e2e_over_dense_cpu_time"] = statistics.median(r[1] / r[3] for r in runs)
    figures["e2e_outside_dense_s"] = statistics.median(r[0] - r[2] for r in runs)
    figures["e2e_outside_dense_cpu_s"] = statistics.median(r[1] - r[3] for r in runs)
    if profile:
        _profile(predictor, record)
    return figures


def _profile(predictor, record):
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if torch.cuda.is_available() and predictor.model.device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities, record_shapes=False, profile_memory=True) as prof:
        predictor(record)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))


# --------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------

INFERENCE_STAGES = [
    ("loading", "load keyframe + sweeps, range filter"),
    ("voxelization", "voxelization"),
    ("batching", "batching (collate pillars)"),
    ("pillar_net", "pillar net"),
    ("scatter", "scatter"),
    ("backbone", "backbone (bottom-up)"),
    ("neck", "neck"),
    ("head", "head (convolutions)"),
    ("post_processing", "post-processing (decode, NMS, Instances)"),
]


def _with_onnxruntime_columns(rows, ort, timer):
    """The eager rows with two columns of the exported graph's run (wall, CPU ms); also stores
    its stage figures in ``ort``. The graph's own stages come from onnxruntime's profiler (none
    with openvino)."""
    wall, cpu, kernel = timer.wall, timer.cpu, ort.get("graph_kernel_s")
    outside = ("loading", "voxelization", "batching", "post_processing")
    ort["stage_s"] = {k: wall[k] for k in (*outside, "graph")}
    ort["stage_cpu_s"] = {k: cpu[k] for k in (*outside, "graph")}
    ort["e2e_latency_s"], ort["e2e_cpu_s"] = wall["e2e"], cpu["e2e"]
    if kernel:
        ort["dense_kernel_s"] = kernel["backbone"] + kernel["neck"] + kernel["head"]
    ort_rows = {}
    for k, label in INFERENCE_STAGES:
        if k in outside:
            ort_rows[label] = [1e3 * wall[k], 1e3 * cpu[k]]
        else:
            ort_rows[label] = [1e3 * kernel[k] if kernel else "", ""]
    ort_rows["sum of the stages"] = [
        1e3 * (sum(wall[k] for k in outside) + wall["graph"]),
        1e3 * (sum(cpu[k] for k in outside) + cpu["graph"]),
    ]
    ort_rows["dense = backbone + neck + head (timed alone)"] = [
        1e3 * ort["dense_kernel_s"] if kernel else "",
        "",
    ]
    ort_rows["end to end (PillarsPredictor)"] = [1e3 * wall["e2e"], 1e3 * cpu["e2e"]]
    out = []
    for row in rows:
        out.append(row + ort_rows.get(row[0], ["", ""]))
        if row[0] == "head (convolutions)":
            out.append(
                ["network graph, one call (pillar net .. head)", "", ""]
                + [1e3 * wall["graph"], 1e3 * cpu["graph"]]
            )
        if row[0] == "  of which outside the dense part":
            out.append(
                ["  of which in the network graph (same runs)", "", ""]
                + [1e3 * ort["e2e_in_run_graph_s"], 1e3 * ort["e2e_in_run_graph_cpu_s"]]
            )
            out.append(
                ["  of which outside the network graph", "", ""]
                + [1e3 * ort["e2e_outside_graph_s"], 1e3 * ort["e2e_outside_graph_cpu_s"]]
            )
    return out


def _graph_label(figures):
    """ "onnxruntime", "openvino int8", "openvino bf16", ... for the table."""
    label = figures["backend"]
    if figures.get("quantize") == "int8":
        label += " int8"
    if figures.get("precision", "f32") != "f32":
        label += f" {figures['precision']}"
    return label


def _verdict(ok):
    return "PASS" if ok else "FAIL"


def main(args):
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    threads = args.threads if args.threads > 0 else len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    torch.manual_seed(args.seed)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("--device cuda: no CUDA device is available here; use --device cpu")
    cfg = _load_cfg(args)

    from ..engine import PillarsPredictor

    root = os.path.abspath(args.root or os.path.join(default_datasets_root(), "synthetic_nuscenes"))
    prepare_dataset(root, max_sweeps=max(10, cfg.INPUT.NUM_SWEEPS))
    val = _full_sweep_dicts(_dataset_dicts(root, "mini_val"), cfg.INPUT.NUM_SWEEPS)
    record = val[len(val) // 2]
    _warm_page_cache([record])

    timer = Timer(args.device, args.repeats, args.warmup)
    load_before = os.getloadavg()
    predictor = PillarsPredictor(cfg)
    if args.load == "full":
        with torch.no_grad():
            predictor.model.head.conv_cls.bias.zero_()
    figures = {
        "device": args.device,
        "threads": threads,
        "config": args.config_file,
        "channels_last": bool(cfg.MODEL.CHANNELS_LAST),
    }
    figures.update(benchmark_inference(predictor, record, timer, profile=args.profile))
    ort_timer, backend = None, args.backend
    if backend != "torch":
        from .onnxruntime_e2e import benchmark_graph

        calibration = []
        if args.quantize == "int8":
            train = _full_sweep_dicts(_dataset_dicts(root, "mini_train"), cfg.INPUT.NUM_SWEEPS)
            calibration = [train[i] for i in _spread(len(train), args.calibration_frames)]
        ort_timer = Timer(args.device, args.repeats, args.warmup)
        figures[backend] = benchmark_graph(
            cfg,
            predictor.model,
            record,
            ort_timer,
            backend=backend,
            threads=threads,
            pillar_net=args.onnx_pillar_net,
            quantize=args.quantize,
            calibration_records=calibration,
            precision=args.openvino_precision,
            reference_e2e=functools.partial(predictor, record),
        )
    del predictor

    if not args.skip_train:
        train = _full_sweep_dicts(_dataset_dicts(root, "mini_train"), cfg.INPUT.NUM_SWEEPS)
        rng = np.random.default_rng(args.seed)
        picks = [train[i] for i in rng.permutation(len(train))[:64]]
        _warm_page_cache(picks)
        figures.update(benchmark_loader(cfg, picks, args))
        figures.update(benchmark_training(cfg, picks, timer, args))
        figures["loader_over_train"] = figures["loader_fps_per_worker"] / figures["train_fps"]
    load_after = os.getloadavg()

    wall, cpu = timer.wall, timer.cpu
    dense = wall["backbone"] + wall["neck"] + wall["head"]
    dense_cpu = cpu["backbone"] + cpu["neck"] + cpu["head"]
    stages_sum = sum(wall[k] for k, _ in INFERENCE_STAGES)
    figures.update(
        {
            "e2e_latency_s": wall["e2e"],
            "e2e_cpu_s": cpu["e2e"],
            # backbone + neck + head inside the end-to-end runs (the ratio's denominator)
            "dense_latency_s": figures["e2e_in_run_dense_s"],
            "dense_cpu_s": figures["e2e_in_run_dense_cpu_s"],
            # the same three stages timed on their own
            "dense_stages_latency_s": dense,
            "dense_stages_cpu_s": dense_cpu,
            "e2e_over_dense_stages": wall["e2e"] / dense,
            "stages_sum_s": stages_sum,
            "stage_s": {k: wall[k] for k, _ in INFERENCE_STAGES},
            "stage_cpu_s": {k: cpu[k] for k, _ in INFERENCE_STAGES},
            "post_processing_s": wall["post_processing"],
            "post_load": args.load,
            "repeats": args.repeats,
            "warmup": args.warmup,
            "load_average_1min": [round(load_before[0], 2), round(load_after[0], 2)],
            "cpu_count": os.cpu_count(),
            "sample_token": record["sample_token"],
            "root": root,
        }
    )

    rows = [[label, 1e3 * wall[k], 1e3 * cpu[k]] for k, label in INFERENCE_STAGES]
    rows.append(
        ["sum of the stages", 1e3 * stages_sum, 1e3 * sum(cpu[k] for k, _ in INFERENCE_STAGES)]
    )
    rows.append(["dense = backbone + neck + head (timed alone)", 1e3 * dense, 1e3 * dense_cpu])
    rows.append(["end to end (PillarsPredictor)", 1e3 * wall["e2e"], 1e3 * cpu["e2e"]])
    rows.append(
        [
            "  of which dense (same runs)",
            1e3 * figures["dense_latency_s"],
            1e3 * figures["dense_cpu_s"],
        ]
    )
    rows.append(
        [
            "  of which outside the dense part",
            1e3 * figures["e2e_outside_dense_s"],
            1e3 * figures["e2e_outside_dense_cpu_s"],
        ]
    )
    if "train_iteration" in wall:
        rows.append(
            [
                f"training iteration (batch {args.train_batch})",
                1e3 * wall["train_iteration"],
                1e3 * cpu["train_iteration"],
            ]
        )
        rows.append(
            [
                "loader keyframe (1 worker, 1 thread)",
                1e3 * figures["loader_s_per_frame"],
                1e3 * figures["loader_cpu_s_per_frame"],
            ]
        )
    headers = ["stage", "wall ms", "process CPU ms"]
    if ort_timer is not None:
        rows = _with_onnxruntime_columns(rows, figures[backend], ort_timer)
        label = _graph_label(figures[backend])
        headers = ["stage", "torch wall ms", "torch CPU ms", f"{label} wall ms", f"{label} CPU ms"]
    print(
        f"device {args.device}, {threads} torch threads, channels_last {figures['channels_last']}, "
        f"{figures['points']} points "
        f"({figures['points_in_range']} in range, {figures['pillars']} pillars), post-processing "
        f"load '{args.load}', median of {args.repeats} after {args.warmup} warm-up, load average "
        f"{load_before[0]:.2f} -> {load_after[0]:.2f} on {os.cpu_count()} CPUs"
    )
    if ort_timer is not None:
        ort = figures[backend]
        print(
            f"{backend} {ort['version']} ({', '.join(ort['providers'])}, {threads} intra-op "
            f"threads): float graph exported in {ort['export_s']:.1f} s, max relative difference "
            f"to torch {ort['export_max_rel_diff']:.2g} on this frame; "
            + (
                "its pillar net .. head rows are onnxruntime profiler kernel times (the graph "
                "runs as one call)"
                if "graph_kernel_s" in ort
                else "the graph runs as one call (no per-stage split)"
            )
        )
        if "int8_check" in ort:
            c = ort["int8_check"]
            print(
                f"int8 graph: calibrated on {ort['calibration_frames']} training frames in "
                f"{ort['quantize_s']:.1f} s; against the float model on this frame (random "
                f"weights, reported only): {c['matched']}/{c['reference_boxes']} boxes matched, "
                f"worst score difference {c['worst_score']:.3f}"
            )
    print_table(rows, headers=headers)

    checks = [
        [
            "end to end / dense (wall, same runs)",
            figures["e2e_over_dense"],
            f"<= {TARGETS['e2e_over_dense_max']}",
            _verdict(figures["e2e_over_dense"] <= TARGETS["e2e_over_dense_max"]),
        ],
        [
            "end to end / dense (process CPU time, same runs)",
            figures["e2e_over_dense_cpu_time"],
            f"<= {TARGETS['e2e_over_dense_max']}",
            _verdict(figures["e2e_over_dense_cpu_time"] <= TARGETS["e2e_over_dense_max"]),
        ],
        [
            "post-processing (s, full load)" if args.load == "full" else "post-processing (s)",
            figures["post_processing_s"],
            f"<= {TARGETS['post_processing_s_max']}",
            _verdict(figures["post_processing_s"] <= TARGETS["post_processing_s_max"]),
        ],
    ]
    if "loader_over_train" in figures:
        checks.append(
            [
                "loader fps per worker / train fps",
                figures["loader_over_train"],
                f">= {TARGETS['loader_over_train_min']}",
                _verdict(figures["loader_over_train"] >= TARGETS["loader_over_train_min"]),
            ]
        )
        if args.device.startswith("cuda") and figures["amp"]:
            limit = TARGETS["train_peak_mem_gb_cuda_amp_max"]
            checks.append(
                [
                    f"train peak memory (GB, CUDA, AMP, batch {args.train_batch})",
                    figures["train_peak_mem_gb"],
                    f"<= {limit}",
                    _verdict(figures["train_peak_mem_gb"] <= limit),
                ]
            )
        else:
            checks.append(["train peak memory (GB)", figures["train_peak_mem_gb"], "", ""])
        checks.append(["train keyframes/s", figures["train_fps"], "", ""])
    if ort_timer is not None:
        # the ratio of the paired runs (eager, then the graph, per repetition); the ratio of
        # the two tables' medians, minutes apart, is kept beside it
        graph = figures[backend]
        ratio = graph["paired_over_torch_e2e"]
        figures[f"{backend}_over_torch_e2e"] = ratio
        figures[f"{backend}_over_torch_e2e_tables"] = (
            graph["e2e_latency_s"] / figures["e2e_latency_s"]
        )
        limit = TARGETS["int8_over_torch_e2e_max"] if args.quantize == "int8" else 1.0
        label = _graph_label(graph)
        checks.append(
            [
                f"{label} end to end / torch end to end (wall, paired runs)",
                ratio,
                f"<= {limit}",
                _verdict(ratio <= limit),
            ]
        )
        checks.append(
            [
                f"{label} end to end / torch end to end (process CPU time, paired runs)",
                graph["paired_over_torch_e2e_cpu"],
                "",
                "",
            ]
        )
        if args.quantize == "int8" and not args.device.startswith("cuda"):
            latency, limit = figures[backend]["e2e_latency_s"], TARGETS["int8_e2e_s_max"]
            checks.append(
                [
                    f"{_graph_label(figures[backend])} end to end (s)",
                    latency,
                    f"<= {limit}",
                    _verdict(latency <= limit),
                ]
            )
    figures["targets"] = {c[0]: c[3] for c in checks if c[3]}
    print_table(checks, headers=["target", "measured", "target", "verdict"])
    print_json(figures)
    return figures
