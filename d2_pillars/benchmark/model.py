"""Per-stage latency, parameter counts and FLOPs of PointPillars models on synthetic pillars.

For each config: build the model (the full ``PointPillars`` when the meta-architecture is
registered, else the pillar net, scatter and backbone), make one sample of synthetic pillars at the
config's grid (``--num-pillars`` random cells, points per pillar drawn around ``--mean-points``,
clipped to ``INPUT.MAX_POINTS_PER_VOXEL``), and time each stage in inference mode: pillar net,
scatter, backbone (bottom-up), neck (the backbone wrapper on cached bottom-up features), head and
post-processing, plus the whole forward. FLOPs are fvcore's count (one multiply-add = one flop)
on the dense part (backbone, neck, head) and on the pillar net's linear layers.

The weights are random, so how many boxes pass the test score threshold (and hence the
post-processing time) depends on the initialisation: the JSON reports ``detections_per_sample``,
and ``--cls-logit-offset`` shifts the class logits to load the NMS.
"""

import argparse
import logging
import numpy as np
import torch

from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone, build_model

from ..config import add_pillars_config
from ..modeling.pillar_encoder import build_pillar_encoder
from ..modeling.pillar_scatter import PillarScatter, grid_size_from_range
from .common import PrecomputedBottomUp, median_time, print_json, print_table, resolve_config_file

__all__ = ["add_arguments", "main", "make_synthetic_pillars", "benchmark_config"]

logger = logging.getLogger(__name__)

DEFAULT_CONFIGS = [
    "configs/nuscenes/pointpillars_secfpn.yaml",
    "configs/nuscenes/pointpillars_fpn.yaml",
    "configs/nuscenes/pointpillars_regnetx_400mf_secfpn.yaml",
    "configs/nuscenes/pointpillars_regnetx_400mf_fpn.yaml",
    "configs/nuscenes/pointpillars_regnetx_1.6gf_fpn.yaml",
]


def add_arguments(parser: argparse.ArgumentParser):
    parser.add_argument(
        "--config-file",
        nargs="+",
        default=DEFAULT_CONFIGS,
        metavar="FILE",
        help="one or several configs (default: the five nuScenes seed configs)",
    )
    parser.add_argument("--num-pillars", type=int, default=30000, help="pillars per sample")
    parser.add_argument(
        "--mean-points", type=float, default=8.0, help="mean points per pillar before clipping"
    )
    parser.add_argument("--batch-size", type=int, default=1, help="samples per forward")
    parser.add_argument(
        "--device", default=None, help="cpu or cuda (default: cuda when available, else cpu)"
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per stage (median)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs per stage")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    parser.add_argument("--no-flops", action="store_true", help="skip the fvcore FLOP count")
    parser.add_argument(
        "--cls-logit-offset",
        type=float,
        default=0.0,
        help="added to the class logits before post-processing (more boxes pass the threshold)",
    )
    parser.add_argument("--seed", type=int, default=0)


def make_synthetic_pillars(cfg, num_pillars, mean_points=8.0, seed=0, device="cpu"):
    """
    One sample of pillars in the config's grid, as the mapper outputs them.

    Returns:
        dict: ``voxels`` (V, M, C) float32, ``voxel_coords`` (V, 3) int32 (z, y, x),
        ``voxel_num_points`` (V,) int32; padding slots are zero.
    """
    rng = np.random.default_rng(seed)
    nx, ny, _ = grid_size_from_range(cfg.INPUT.POINT_CLOUD_RANGE, cfg.INPUT.VOXEL_SIZE)
    max_points = cfg.INPUT.MAX_POINTS_PER_VOXEL
    features = list(cfg.INPUT.POINT_FEATURES)
    num = min(num_pillars, nx * ny)
    cells = rng.choice(nx * ny, size=num, replace=False)
    y, x = cells // nx, cells % nx
    num_points = np.clip(rng.geometric(1.0 / mean_points, size=num), 1, max_points)
    pc_range, size = cfg.INPUT.POINT_CLOUD_RANGE, cfg.INPUT.VOXEL_SIZE
    voxels = rng.random((num, max_points, len(features)), dtype=np.float32)
    voxels[..., 0] = pc_range[0] + (x[:, None] + voxels[..., 0]) * size[0]
    voxels[..., 1] = pc_range[1] + (y[:, None] + voxels[..., 1]) * size[1]
    voxels[..., 2] = rng.normal(-1.0, 0.8, size=(num, max_points))
    if "time_lag" in features:
        voxels[..., features.index("time_lag")] *= 0.45
    voxels[np.arange(max_points)[None, :] >= num_points[:, None]] = 0.0
    coords = np.stack([np.zeros_like(y), y, x], axis=1)
    return {
        "voxels": torch.from_numpy(voxels).to(device),
        "voxel_coords": torch.from_numpy(coords.astype(np.int32)).to(device),
        "voxel_num_points": torch.from_numpy(num_points.astype(np.int32)).to(device),
    }


def _load_cfg(path, device):
    cfg = get_cfg()
    add_pillars_config(cfg)
    cfg.merge_from_file(resolve_config_file(path))
    cfg.MODEL.DEVICE = device
    return cfg


def _num_params(module):
    return sum(p.numel() for p in module.parameters()) if module is not None else 0


def _flops(module, inputs):
    from fvcore.nn import FlopCountAnalysis

    analysis = FlopCountAnalysis(module, inputs)
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    analysis.tracer_warnings("none")
    return analysis


def _build(cfg):
    """The model's stages: (pillar net, scatter, backbone, head or None, model or None)."""
    if "PointPillars" in META_ARCH_REGISTRY or _try_import_meta_arch():
        model = build_model(cfg).eval()
        return model.pillar_encoder, model.scatter, model.backbone, model.head, model
    device = torch.device(cfg.MODEL.DEVICE)
    pfn = build_pillar_encoder(cfg).to(device).eval()
    scatter = PillarScatter(cfg).to(device)
    backbone = build_backbone(cfg, ShapeSpec(channels=pfn.out_channels, stride=1))
    return pfn, scatter, backbone.to(device).eval(), None, None


def _try_import_meta_arch():
    try:
        from ..modeling import meta_arch  # noqa: F401
    except ImportError as e:
        logger.warning("no PointPillars meta-architecture (%s): timing without head", e)
        return False
    return "PointPillars" in META_ARCH_REGISTRY


@torch.no_grad()
def benchmark_config(cfg, args):
    """Time, count and measure one config; returns a dict of figures."""
    device = cfg.MODEL.DEVICE
    pfn, scatter, backbone, head, model = _build(cfg)
    samples = [
        make_synthetic_pillars(cfg, args.num_pillars, args.mean_points, args.seed + i, device)
        for i in range(args.batch_size)
    ]
    voxels = torch.cat([s["voxels"] for s in samples])
    num_points = torch.cat([s["voxel_num_points"] for s in samples])
    coords = torch.cat(
        [torch.nn.functional.pad(s["voxel_coords"], (1, 0), value=i) for i, s in enumerate(samples)]
    )
    bottom_up = getattr(backbone, "bottom_up", None)
    in_features = list(cfg.MODEL.ANCHOR3D_HEAD.IN_FEATURES)

    def time_ms(fn):
        return 1000.0 * median_time(fn, repeats=args.repeats, warmup=args.warmup, device=device)

    latency = {}
    latency["pillar_net"] = time_ms(lambda: pfn(voxels, num_points, coords))
    features = pfn(voxels, num_points, coords)
    latency["scatter"] = time_ms(lambda: scatter(features, coords, args.batch_size))
    canvas = scatter(features, coords, args.batch_size)
    if bottom_up is not None:
        latency["backbone"] = time_ms(lambda: bottom_up(canvas))
        # the neck alone: the wrapper's forward with its bottom-up part answering from a cache
        backbone.bottom_up = PrecomputedBottomUp(bottom_up(canvas))
        try:
            latency["neck"] = time_ms(lambda: backbone(canvas))
        finally:
            backbone.bottom_up = bottom_up
    else:
        latency["backbone"] = time_ms(lambda: backbone(canvas))
    maps = backbone(canvas)
    head_inputs = [maps[f] for f in in_features]
    if head is not None:
        latency["head"] = time_ms(lambda: head(head_inputs))
        cls, box, direction = head(head_inputs)
        cls = [c + args.cls_logit_offset for c in cls]
        grid_sizes = [tuple(f.shape[-2:]) for f in head_inputs]
        image_size = tuple(canvas.shape[-2:])
        latency["post_processing"] = time_ms(
            lambda: head.inference(grid_sizes, cls, box, direction, image_size)
        )
        results = head.inference(grid_sizes, cls, box, direction, image_size)
        num_detections = float(np.mean([len(r) for r in results]))
        latency["total"] = time_ms(lambda: model(samples))
    else:
        num_detections = None

    params = {
        "pillar_net": _num_params(pfn),
        "backbone": _num_params(bottom_up if bottom_up is not None else backbone),
    }
    if bottom_up is not None:
        params["neck"] = _num_params(backbone) - params["backbone"]
    if head is not None:
        params["head"] = _num_params(head)
    params["total"] = sum(params.values())

    gflops = {}
    if not args.no_flops:
        one = canvas[:1]
        dense = _flops(backbone, (one,))
        by_module = dense.by_module()
        if bottom_up is not None:
            gflops["backbone"] = by_module["bottom_up"] / 1e9
            gflops["neck"] = (dense.total() - by_module["bottom_up"]) / 1e9
        else:
            gflops["backbone"] = dense.total() / 1e9
        if head is not None:
            gflops["head"] = _flops(head, ([m[:1] for m in head_inputs],)).total() / 1e9
        first = coords[:, 0] == 0
        gflops["pillar_net"] = (
            _flops(pfn, (voxels[first], num_points[first], coords[first])).total() / 1e9
        )
        gflops["total"] = sum(gflops.values())

    nx, ny = scatter.grid_size
    return {
        "grid": [nx, ny],
        "num_pillars": int(coords.shape[0]),
        "num_points": int(num_points.long().clamp(max=voxels.shape[1]).sum()),
        "backbone_name": cfg.MODEL.BACKBONE.NAME,
        "latency_ms": latency,
        "params_M": {k: v / 1e6 for k, v in params.items()},
        "gflops": gflops,
        "detections_per_sample": num_detections,
    }


def main(args):
    logging.basicConfig(level=logging.WARNING)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(args.seed)
    results = {}
    for path in args.config_file:
        cfg = _load_cfg(path, device)
        results[path] = benchmark_config(cfg, args)

    stages = ["pillar_net", "scatter", "backbone", "neck", "head", "post_processing", "total"]
    rows = []
    for path, r in results.items():
        lat = r["latency_ms"]
        rows.append(
            [path.split("configs/")[-1], "x".join(map(str, r["grid"]))]
            + [lat.get(s, float("nan")) for s in stages]
            + [r["params_M"]["total"], r["gflops"].get("total", float("nan"))]
        )
    print(
        f"device {device}, {torch.get_num_threads()} threads, batch {args.batch_size}, "
        f"{args.num_pillars} pillars per sample, median of {args.repeats} runs (ms)"
    )
    print_table(rows, ["config", "grid"] + stages + ["params (M)", "GFLOPs"])
    print_json(
        {
            "benchmark": "model",
            "device": device,
            "threads": torch.get_num_threads(),
            "batch_size": args.batch_size,
            "configs": results,
        }
    )
