"""Training-side figures of ``tools/benchmark.py e2e``: iterations and keyframes per second of the
trainer's own step on mapped samples, its peak memory, and one data-loader worker's keyframes/s."""

import numpy as np
import statistics
import time
import torch

from ..data.mapper import PointCloudMapper
from .measure import peak_rss_bytes, read_status_kb, reset_peak_rss, torch_threads

__all__ = ["mapped_batches", "benchmark_training", "benchmark_loader"]


def mapped_batches(cfg, records, batch, count, seed):
    """``count`` batches of mapped training samples (mapper None results skipped)."""
    np.random.seed(seed)
    mapper = PointCloudMapper(cfg, is_train=True)
    samples, i = [], 0
    while len(samples) < batch * count:
        out = mapper(records[i % len(records)])
        i += 1
        if out is not None:
            samples.append(out)
        if i > 10 * batch * count + 100:
            raise RuntimeError("the training mapper returns no annotated sample")
    return [samples[k * batch : (k + 1) * batch] for k in range(count)]


def benchmark_training(cfg, records, timer, args):
    """Training iterations/s, keyframes/s and peak memory of ``--train-batch`` samples."""
    from detectron2.utils.events import EventStorage

    from ..engine import PillarsTrainer, build_pillars_model, build_step_trainer

    device = torch.device(cfg.MODEL.DEVICE)
    torch.manual_seed(args.seed)
    model = build_pillars_model(cfg).train()
    optimizer = PillarsTrainer.build_optimizer(cfg, model)
    batches = mapped_batches(
        cfg, records, args.train_batch, args.train_warmup + args.train_repeats, args.seed
    )
    # The step PillarsTrainer runs: plain, CUDA float16 with loss scaling, or CPU bfloat16.
    trainer = build_step_trainer(cfg, model, iter(batches), optimizer)
    storage = EventStorage(0)

    def step():
        with storage:
            trainer.run_step()
        storage.step()

    figures = {"amp": bool(cfg.SOLVER.AMP.ENABLED)}
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        timer("train_iteration", step, repeats=args.train_repeats, warmup=args.train_warmup)
        peak = torch.cuda.max_memory_allocated()
        figures["train_peak_mem_source"] = "torch.cuda.max_memory_allocated"
    else:
        base = read_status_kb("VmRSS") or 0
        reset = reset_peak_rss()
        timer("train_iteration", step, repeats=args.train_repeats, warmup=args.train_warmup)
        peak = peak_rss_bytes()
        figures["train_peak_mem_source"] = (
            "VmHWM (peak RSS, reset before training)" if reset else "ru_maxrss (process peak RSS)"
        )
    figures["train_peak_mem_gb"] = round(peak / 2**30, 3)
    figures["train_mem_before_gb"] = round(base / 2**30, 3)
    figures["train_iter_s"] = timer.wall["train_iteration"]
    figures["train_iter_cpu_s"] = timer.cpu["train_iteration"]
    figures["train_its"] = 1.0 / timer.wall["train_iteration"]
    figures["train_fps"] = args.train_batch / timer.wall["train_iteration"]
    return figures


def benchmark_loader(cfg, records, args):
    """Keyframes/s of the training mapper with one torch thread (one data-loader worker)."""
    np.random.seed(args.seed)
    mapper = PointCloudMapper(cfg, is_train=True)
    wall, cpu = [], []
    with torch_threads(1):
        for i in range(args.warmup + args.loader_samples):
            t0, c0 = time.perf_counter(), time.process_time()
            mapper(records[i % len(records)])
            if i >= args.warmup:
                wall.append(time.perf_counter() - t0)
                cpu.append(time.process_time() - c0)
    return {
        "loader_s_per_frame": statistics.median(wall),
        "loader_cpu_s_per_frame": statistics.median(cpu),
        "loader_fps_per_worker": 1.0 / statistics.median(wall),
        "loader_fps_per_worker_cpu_time": 1.0 / statistics.median(cpu),
    }
