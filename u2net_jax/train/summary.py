"""The run's summary: `eval/summary.json`, `eval/per_case.json` and the console table."""

from __future__ import annotations

import json
import os

import numpy as np


def make_summary(step, mode, results, dataset_meta, counts, train_seconds) -> dict:
  """The `eval/summary.json` object."""
  return {
      "step": int(step), "mode": mode,
      "domains": {n: {"dice": r["dice"], "mean_dice": r["mean_dice"], "hd95_mm": r["hd95_mm"],
                      "surface_dice": r["surface_dice"], "cases": r["cases"],
                      "grid": r.get("grid", "preprocessed"),
                      "threshold_baseline_dice": dataset_meta[n].get("threshold_baseline_dice"),
                      # eval.postprocess=official: the Dice before it
                      **{k: r[k] for k in ("dice_raw", "mean_dice_raw") if k in r}}
                  for n, r in results.items()},
      "params": {k: counts[k] for k in ("shared", "per_domain", "total")},
      "train_seconds": None if train_seconds is None else float(train_seconds),
  }


def write_summary(workdir: str, summary: dict, results: dict) -> None:
  """`<workdir>/eval/summary.json` and `per_case.json`, each replaced whole."""
  d = os.path.join(workdir, "eval")
  os.makedirs(d, exist_ok=True)
  path = os.path.join(d, "summary.json")
  with open(path + ".tmp", "w") as f:
    json.dump(summary, f, indent=2)
  os.replace(path + ".tmp", path)
  with open(os.path.join(d, "per_case.json.tmp"), "w") as f:
    json.dump({n: r["per_case"] for n, r in results.items()}, f, indent=2)
  os.replace(os.path.join(d, "per_case.json.tmp"), os.path.join(d, "per_case.json"))


def print_table(summary: dict, log) -> None:
  """Mean and per-class Dice of each domain, next to the threshold baseline (and,
  with post-processing, the mean Dice before it: column `raw`)."""
  doms = summary["domains"]
  raw = all("mean_dice_raw" in r for r in doms.values())
  log(f"{'domain':<12} {'mean Dice':>9}" + (f" {'raw':>6}" if raw else "")
      + f" {'threshold':>9}  per class")
  for n, r in doms.items():
    base = r.get("threshold_baseline_dice")
    base = f"{base:.3f}" if isinstance(base, (int, float)) else "-"
    per = ", ".join(f"{c} {v:.3f}" for c, v in r["dice"].items())
    log(f"{n:<12} {r['mean_dice']:>9.3f}" + (f" {r['mean_dice_raw']:>6.3f}" if raw else "")
        + f" {base:>9}  {per}")
  log(f"mean over domains: {np.mean([r['mean_dice'] for r in doms.values()]):.3f}"
      + (f" (before post-processing {np.mean([r['mean_dice_raw'] for r in doms.values()]):.3f})"
         if raw else ""))
