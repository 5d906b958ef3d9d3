#!/usr/bin/env python
"""The figures and the verdict of tools/gpu_check.sh, read from its output folder.

    python tools/gpu_check_report.py OUT [--device cuda]

Reads ``OUT/steps.tsv`` (step name, exit status), the two training runs (``OUT/train_amp_on``,
``OUT/train_amp_off``: ``metrics.json`` and the log's ``max_mem``), the ``--eval-only`` summaries
and the last JSON line of each ``OUT/e2e_*.log``; prints a table of the figures, then ONE JSON
line (the last line of the output) with the figures, each target's value and pass/fail, and
``"pass"`` (all targets met and every step exited 0). Exit status 0 when it passed.
"""

import argparse
import glob
import json
import os
import re
import statistics
import sys

#: Targets of issue 23 (one GPU; batch 4 per GPU as the reference's 4x8 schedule).
TRAIN_PEAK_MEM_GB_AMP_MAX = 8.6  # the reference needs 17.3 GB at batch 4
E2E_MS_PER_FRAME_MAX = 15.0  # H100, a 10-sweep nuScenes frame, points -> detections
DATA_TIME_SHARE_MAX = 0.1  # data loading not the bottleneck: data_time <= 10 % of an iteration


def _json_lines(path):
    if not os.path.isfile(path):
        return []
    rows = []
    with open(path, errors="replace") as f:
        for line in f:
            if line.strip().startswith("{"):
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    pass  # a log line that merely starts with a brace
    return rows


def _last_json(path):
    rows = _json_lines(path)
    return rows[-1] if rows else None


def training_figures(run_dir, log_path):
    """Median s/iter and data time (first 2 records skipped: warm-up), the peak CUDA memory the
    log's last ``max_mem`` reports (``torch.cuda.max_memory_allocated``), skipped AMP steps and
    the first / last total loss of a detectron2 run."""
    rows = [r for r in _json_lines(os.path.join(run_dir, "metrics.json")) if "time" in r]
    if not rows:
        return None
    timed = rows[2:] or rows
    out = {
        "iterations": rows[-1]["iteration"] + 1,
        "s_per_iter": statistics.median(r["time"] for r in timed),
        "data_time_s": statistics.median(r["data_time"] for r in timed),
        "loss_first": rows[0].get("total_loss"),
        "loss_last": rows[-1].get("total_loss"),
        "amp_skipped_steps": max((r.get("amp_skipped_steps", 0) for r in rows), default=0),
    }
    out["data_time_share"] = out["data_time_s"] / max(out["s_per_iter"], 1e-12)
    mem = []
    if os.path.isfile(log_path):
        with open(log_path, errors="replace") as f:
            mem = re.findall(r"max_mem: (\d+)M", f.read())
    out["max_mem_gb"] = int(mem[-1]) / 1024.0 if mem else None
    return out


def eval_figures(out_dir):
    """mAP / NDS of the first metrics_summary.json under ``out_dir`` (None when absent)."""
    found = sorted(glob.glob(os.path.join(out_dir, "**", "metrics_summary.json"), recursive=True))
    if not found:
        return None
    with open(found[0]) as f:
        m = json.load(f)
    return {"mAP": m.get("mean_ap"), "NDS": m.get("nd_score")}


def _target(value, limit, below=True):
    ok = value is not None and (value <= limit if below else value >= limit)
    return {"value": value, "limit": ("<= " if below else ">= ") + str(limit), "pass": bool(ok)}


def report(out, device="cuda"):
    steps = {}
    tsv = os.path.join(out, "steps.tsv")
    if os.path.isfile(tsv):
        with open(tsv) as f:
            for line in f:
                name, _, rc = line.rstrip("\n").partition("\t")
                if name:
                    steps[name] = int(rc) if rc.strip().lstrip("-").isdigit() else rc
    figures = {"device": device, "steps": steps}
    env = _last_json(os.path.join(out, "env.log"))
    if env:
        figures["env"] = env
    for amp in ("on", "off"):
        figures[f"train_amp_{amp}"] = training_figures(
            os.path.join(out, f"train_amp_{amp}"), os.path.join(out, f"train_amp_{amp}.log")
        )
    figures["eval_in_training"] = eval_figures(os.path.join(out, "train_amp_on", "inference"))
    figures["eval_only"] = eval_figures(os.path.join(out, "eval_only"))
    for low in ("float16", "bfloat16"):  # MODEL.INFERENCE_DTYPE of the second --eval-only
        if os.path.isdir(os.path.join(out, f"eval_only_{low}")):
            figures[f"eval_only_{low}"] = eval_figures(os.path.join(out, f"eval_only_{low}"))
    e2e = {}
    for name in ("float32", "float16", "bfloat16"):
        row = _last_json(os.path.join(out, f"e2e_{name}.log"))
        if row:
            e2e[name] = {
                k: row.get(k)
                for k in (
                    "e2e_latency_s",
                    "dense_latency_s",
                    "e2e_over_dense",
                    "points",
                    "train_iter_s",
                    "train_peak_mem_gb",
                    "train_fps",
                    "loader_fps_per_worker",
                    "loader_over_train",
                    "amp",
                )
                if k in row
            }
    figures["e2e"] = e2e

    amp_on = figures["train_amp_on"] or {}
    peak = (e2e.get("float32") or {}).get("train_peak_mem_gb")
    if peak is None:
        peak = amp_on.get("max_mem_gb")
    e2e_ms = (e2e.get("float32") or {}).get("e2e_latency_s")
    e2e_ms = None if e2e_ms is None else 1e3 * e2e_ms
    figures["targets"] = {
        "train_peak_mem_gb_batch4_amp": _target(peak, TRAIN_PEAK_MEM_GB_AMP_MAX),
        "e2e_ms_per_10_sweep_frame": _target(e2e_ms, E2E_MS_PER_FRAME_MAX),
        "data_time_share_amp_on": _target(amp_on.get("data_time_share"), DATA_TIME_SHARE_MAX),
    }
    for low in ("float16", "bfloat16"):
        if low in e2e and e2e[low].get("e2e_latency_s") is not None:
            figures[f"e2e_ms_{low}"] = 1e3 * e2e[low]["e2e_latency_s"]
    failed_steps = [k for k, rc in steps.items() if rc != 0]
    figures["failed_steps"] = failed_steps
    figures["pass"] = not failed_steps and all(t["pass"] for t in figures["targets"].values())
    return figures


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="the output folder of tools/gpu_check.sh")
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args(argv)
    figures = report(args.out, args.device)
    for name, t in figures["targets"].items():
        verdict = "PASS" if t["pass"] else "FAIL"
        print(f"{verdict}  {name}: {t['value']} (target {t['limit']})")
    for name, rc in figures["steps"].items():
        print(f"step {name}: exit {rc}")
    print(json.dumps(figures, sort_keys=True, default=str))
    return 0 if figures["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
