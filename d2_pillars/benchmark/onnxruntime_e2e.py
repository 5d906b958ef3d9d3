"""The exported-graph column of ``tools/benchmark.py e2e --backend onnxruntime|openvino
[--quantize int8]``.

The benchmark's eager model (same weights, same full-load class bias) is exported with
:func:`d2_pillars.deploy.export_onnx` (checked on the benchmark frame itself), or with
``--quantize int8`` by :func:`d2_pillars.deploy.export_int8` (calibrated on training frames of the
benchmark's dataset; its check against the float model on the benchmark frame is reported, not
enforced: the weights are random), and run by :class:`d2_pillars.deploy.OnnxPillarsPredictor`
with ``MODEL.BACKEND`` onnxruntime or openvino and the same number of threads. The stages
outside the graph (loading, voxelization, batching, post-processing) are the same code as the
eager path, timed again in this run; the graph is timed as one call (``session.run``), and split
into pillar net, scatter, backbone, neck and head with onnxruntime's profiler: the kernel times of
its nodes, attributed by the module each node was exported from (the exporter's name scopes;
onnxruntime only: with openvino the graph is one figure).
"""

import ast
import json
import os
import statistics
import tempfile
import time
from collections import defaultdict
import torch

from .common import load_stage

__all__ = ["benchmark_onnxruntime", "benchmark_graph", "GRAPH_STAGES", "node_stages"]

#: Stages of the graph, as the eager table names them.
GRAPH_STAGES = ("pillar_net", "scatter", "backbone", "neck", "head")


def node_stages(onnx_path):
    """``{node name: stage}`` from the name scopes the exporter stores in each node's metadata
    (``pillar_net``, ``scatter``, ``backbone.bottom_up`` -> backbone, other ``backbone.*`` ->
    neck, ``head``); nodes outside these modules map to "other"."""
    import onnx

    stages = {}
    for node in onnx.load(onnx_path, load_external_data=False).graph.node:
        meta = {p.key: p.value for p in node.metadata_props}
        try:
            scopes = ast.literal_eval(meta.get("pkg.torch.onnx.name_scopes", "[]"))
        except (ValueError, SyntaxError):
            scopes = []
        top = scopes[1] if len(scopes) > 1 else ""
        if top == "backbone":
            sub = scopes[2] if len(scopes) > 2 else ""
            stage = "backbone" if sub == "backbone.bottom_up" else "neck"
        elif top in ("pillar_net", "scatter", "head"):
            stage = top
        else:
            stage = "other"
        stages[node.name] = stage
        for output in node.output:  # onnxruntime names some fused nodes after their output
            stages.setdefault(output, stage)
    return stages


def _stage_of(event_node, stages):
    """The stage of a profiled node: by its name, or for a node onnxruntime created (NCHWc
    layout, fusion) by the graph node or tensor it was made from; layout reorders: "other"."""
    for suffix in ("", "_nchwc"):
        name = event_node[: -len(suffix)] if suffix and event_node.endswith(suffix) else event_node
        if name in stages:
            return stages[name]
    return "other"


def _profile_graph(path, feeds, output_names, threads, runs, providers=("CPUExecutionProvider",)):
    """Mean kernel seconds per stage over ``runs`` profiled runs (after one warm-up)."""
    import onnxruntime as ort

    stages = node_stages(path)
    with tempfile.TemporaryDirectory(prefix="d2_pillars_ort_profile_") as tmp:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.log_severity_level = 3
        options.enable_profiling = True
        options.profile_file_prefix = os.path.join(tmp, "ort")
        session = ort.InferenceSession(path, options, providers=list(providers))
        for _ in range(runs + 1):
            session.run(output_names, feeds)
        with open(session.end_profiling()) as f:
            events = json.load(f)
    node_events = [
        e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")
    ]
    run_events = [e for e in events if e.get("cat") == "Session" and e["name"] == "model_run"]
    totals = defaultdict(float)
    # the first run is the warm-up: skip its node events
    first_end = run_events[0]["ts"] + run_events[0]["dur"] if run_events else -1
    for e in node_events:
        if e["ts"] <= first_end:
            continue
        totals[_stage_of(e["name"][: -len("_kernel_time")], stages)] += e["dur"] * 1e-6
    return {k: v / runs for k, v in totals.items()}


def benchmark_onnxruntime(cfg, torch_model, record, timer, **kwargs):
    """:func:`benchmark_graph` with onnxruntime."""
    return benchmark_graph(cfg, torch_model, record, timer, backend="onnxruntime", **kwargs)


def _export(cfg, torch_model, sample, out, pillar_net, quantize, calibration_samples, backend):
    from ..deploy import export_int8, export_onnx
    from ..deploy.matching import MatchTolerance

    if quantize != "int8":
        report = export_onnx(cfg, out, model=torch_model, sample=sample, pillar_net=pillar_net)
        return report.path, {
            "export_s": report.export_seconds,
            "export_max_rel_diff": report.worst_rel_diff,
        }
    report = export_int8(
        cfg,
        out,
        model=torch_model,
        backend=backend,
        calibration_samples=calibration_samples,
        check_samples=[sample],
        # random weights at full load: every box scores ~0.5, reported, not enforced
        tolerance=MatchTolerance(min_score=0.0),
        sample=sample,
        pillar_net=pillar_net,
        progress=False,
        raise_error=False,
    )
    return report.path, {
        "export_s": report.float_export.get("export_seconds", 0.0),
        "export_max_rel_diff": report.float_export.get("worst_rel_diff", 0.0),
        "quantize_s": report.quantize_seconds,
        "calibration_frames": report.calibration_frames,
        "int8_check": report.check,
    }


@torch.no_grad()
def benchmark_graph(
    cfg,
    torch_model,
    record,
    timer,
    *,
    backend="onnxruntime",
    threads,
    pillar_net="bucketed",
    quantize="none",
    calibration_records=(),
    precision="f32",
    profile_runs=3,
    reference_e2e=None,
):
    """Export ``torch_model`` (``quantize`` "int8": calibrated on ``calibration_records``), then
    time the ``backend`` predictor's stages and its end-to-end latency on ``record``; returns
    the figures (seconds) with the export's check.

    ``reference_e2e``: the eager end to end (a callable), run just before each timed graph end
    to end: the pairs see the same machine state, and the median of the per-pair ratios
    (``paired_over_torch_e2e``) is the comparison a shared or throttled host cannot skew (its
    speed drifts by tens of percent over the minutes between the two tables' runs)."""
    from ..data.mapper import PointCloudMapper
    from ..deploy import OnnxPillarsPredictor, model_inputs
    from ..deploy.export import points_only

    mapper = PointCloudMapper(cfg, is_train=False)
    sample = mapper(record)
    calibration = [mapper(points_only(r)) for r in calibration_records]
    figures = {"backend": backend, "quantize": quantize}
    with tempfile.TemporaryDirectory(prefix="d2_pillars_bench_onnx_") as out:
        export_cfg = cfg.clone()
        export_cfg.defrost()
        # the int8 export's check runs the graph in the precision timed here
        export_cfg.MODEL.OPENVINO.INFERENCE_PRECISION = precision
        path, export_figures = _export(
            export_cfg, torch_model, sample, out, pillar_net, quantize, calibration, backend
        )
        figures.update(export_figures)
        onnx_cfg = cfg.clone()
        onnx_cfg.defrost()
        onnx_cfg.MODEL.BACKEND = backend
        onnx_cfg.MODEL.ONNX.PATH = path
        onnx_cfg.MODEL.OPENVINO.INFERENCE_PRECISION = precision
        # CPU runs compare CPU with CPU; with --device cuda the default order (TensorRT, CUDA)
        cpu = torch.device(cfg.MODEL.DEVICE).type == "cpu"
        onnx_cfg.MODEL.ONNX.PROVIDERS = ["CPUExecutionProvider"] if cpu else []
        predictor = OnnxPillarsPredictor(onnx_cfg, intra_op_threads=threads)
        model = predictor.model
        figures["providers"] = list(model.providers)

        # the stages outside the graph: the same code as the eager path
        points_t = None

        def voxelize():
            return mapper.voxelizer(points_t)

        load = load_stage(mapper, record)  # the eager table's loading stage, shared
        timer("loading", load)
        points_t = torch.from_numpy(load()[1])
        timer("voxelization", voxelize)
        # batching: the collate, and for the bucketed pillar net the grouping by point count
        timer("batching", lambda: model.graph_feeds(*model_inputs(sample)))
        feeds = model.graph_feeds(*model_inputs(sample))
        timer("graph", lambda: model.run_graph(feeds))
        outputs = model.run_graph(feeds)
        timer("post_processing", lambda: model.postprocess(outputs)[0].to("cpu"))

        # end to end, each run split into its graph call and the rest
        run_graph = model.run_graph
        in_graph = []

        def timed_run_graph(*args, **kwargs):
            t0, c0 = time.perf_counter(), time.process_time()
            result = run_graph(*args, **kwargs)
            in_graph.append((time.perf_counter() - t0, time.process_time() - c0))
            return result

        model.run_graph = timed_run_graph
        runs = []

        def e2e():
            ref = (0.0, 0.0)
            if reference_e2e is not None:
                t0, c0 = time.perf_counter(), time.process_time()
                reference_e2e()
                ref = (time.perf_counter() - t0, time.process_time() - c0)
            in_graph.clear()
            t0, c0 = time.perf_counter(), time.process_time()
            predictor(record)
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            runs.append((wall, cpu, in_graph[0][0], in_graph[0][1], *ref))

        try:
            timer("e2e", e2e)
        finally:
            del model.run_graph
        runs = runs[timer.warmup :]
        # the graph's end to end alone (the timer's figure includes the paired eager runs)
        timer.wall["e2e"] = statistics.median(r[0] for r in runs)
        timer.cpu["e2e"] = statistics.median(r[1] for r in runs)
        figures["e2e_in_run_graph_s"] = statistics.median(r[2] for r in runs)
        figures["e2e_in_run_graph_cpu_s"] = statistics.median(r[3] for r in runs)
        figures["e2e_outside_graph_s"] = statistics.median(r[0] - r[2] for r in runs)
        figures["e2e_outside_graph_cpu_s"] = statistics.median(r[1] - r[3] for r in runs)
        if reference_e2e is not None:
            figures["paired_torch_e2e_s"] = statistics.median(r[4] for r in runs)
            figures["paired_latency_s"] = statistics.median(r[0] for r in runs)
            figures["paired_over_torch_e2e"] = statistics.median(r[0] / r[4] for r in runs)
            figures["paired_over_torch_e2e_cpu"] = statistics.median(r[1] / r[5] for r in runs)

        figures["pillar_net"] = model.pillar_net
        if backend == "onnxruntime":
            kernel = _profile_graph(
                path, feeds, model.output_names, threads, profile_runs, model.providers
            )
            figures["graph_kernel_s"] = {k: kernel.get(k, 0.0) for k in (*GRAPH_STAGES, "other")}
        figures["detections"] = len(model.postprocess(outputs)[0])
    if backend == "openvino":
        import openvino

        figures["version"] = openvino.__version__
        figures["precision"] = precision
    else:
        import onnxruntime

        figures["version"] = onnxruntime.__version__
    return figures
