"""Validation curves of the paper-table runs: collect, aggregate over seeds, plot.

Pure helpers for `experiments/paper_table.py` (no training, no JAX):

  read_metrics(path)             the records of a run's `metrics.jsonl`
  run_points(records, summary)   [{"step", "mean_dice", "dice": {domain: Dice}}]: the
                                 intermediate evaluations (`val/mean_dice`, `val/<domain>`
                                 scalars) plus the final one (`eval/summary.json`)
  mean_sd(values)                {"mean", "sd", "n"}; sd is the sample standard
                                 deviation (ddof=1), None for fewer than 2 values
  aggregate(points_by_seed)      mean and sd across seeds at each step
  build_curves(by_row, domains)  the `paper_curves.json` object
  plot(curves, path)             `paper_curves.png` (matplotlib, Agg backend)
"""

from __future__ import annotations

import json
import math
import os

from u2net_jax import io

SD_NOTE = "sample standard deviation (ddof=1) across seeds; none for a single seed"


def mean_sd(values) -> dict:
  """{"mean", "sd", "n"} of the non-None values (sample sd, ddof=1, when n ≥ 2)."""
  vals = [float(v) for v in values if v is not None]
  n = len(vals)
  if not n:
    return {"mean": None, "sd": None, "n": 0}
  mean = sum(vals) / n
  sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1)) if n >= 2 else None
  return {"mean": mean, "sd": sd, "n": n}


def read_metrics(path: str) -> list[dict]:
  """The JSON records of a `metrics.jsonl` ([] if absent; a cut-off line is skipped)."""
  if not os.path.exists(path):
    return []
  records = []
  with open(path) as f:
    for line in f:
      line = line.strip()
      if not line:
        continue
      try:
        records.append(json.loads(line))
      except json.JSONDecodeError:  # the last line of a killed run
        continue
  return records


def run_points(records: list[dict], summary: dict | None = None) -> list[dict]:
  """One run's validation points, by step.

  `records`: metrics.jsonl; the evaluations along the way are the records with
  `val/mean_dice` (and `val/<domain>` per domain). A step logged twice (a run
  resumed from an earlier checkpoint repeats it) keeps the last record.
  `summary`: eval/summary.json, the final evaluation (None: not finished).
  """
  by_step = {}
  for r in records:
    if "val/mean_dice" not in r:
      continue
    dice = {k[len("val/"):]: float(v) for k, v in r.items()
            if k.startswith("val/") and k != "val/mean_dice"}
    by_step[int(r["step"])] = {"step": int(r["step"]), "mean_dice": float(r["val/mean_dice"]),
                               "dice": dice}
  if summary is not None:
    dice = {n: float(d["mean_dice"]) for n, d in summary["domains"].items()}
    by_step[int(summary["step"])] = {"step": int(summary["step"]),
                                     "mean_dice": sum(dice.values()) / len(dice), "dice": dice}
  return [by_step[s] for s in sorted(by_step)]


def point_value(point: dict, domains=None) -> float | None:
  """The point's mean Dice, or the mean over `domains` (e.g. the new domain)."""
  if not domains:
    return point["mean_dice"]
  vals = [point["dice"].get(d) for d in domains]
  return None if None in vals else sum(vals) / len(vals)


def aggregate(points_by_seed: dict, domains=None) -> list[dict]:
  """[{"step", "mean", "sd", "n"}]: across the given seeds' points at each step."""
  steps = sorted({p["step"] for pts in points_by_seed.values() for p in pts})
  return [{"step": s, **mean_sd(point_value(p, domains) for pts in points_by_seed.values()
                                for p in pts if p["step"] == s)}
          for s in steps]


def curve_entry(points_by_seed: dict, complete, domains=None) -> dict:
  """A row of paper_curves.json: each seed's points; mean ± sd over complete seeds."""
  return {
      "value": "mean_dice" if not domains else "dice of " + ",".join(domains),
      "seeds": {str(k): {"complete": k in complete, "points": pts}
                for k, pts in points_by_seed.items()},
      "mean": aggregate({k: pts for k, pts in points_by_seed.items() if k in complete}, domains),
  }


def build_curves(by_row: dict, new_domains, seeds) -> dict:
  """paper_curves.json from paper_table's per-row runs.

  `by_row`: {row: {"kind": setting|added|independent, "summaries": {seed:
  summary or None (incomplete)}, "points": {seed: run_points}}}. The new-domain
  rows' value is the new domain's Dice, the others' the mean over domains.
  """
  rows, new = {}, {"domains": list(new_domains)}
  for row, e in by_row.items():
    complete = [k for k, s in e["summaries"].items() if s is not None]
    domains = list(new_domains) if e["kind"] != "setting" else None
    rows[row] = curve_entry(e["points"], complete, domains)
    if e["kind"] != "setting":
      new[e["kind"]] = row
  return {"seeds": list(seeds), "sd": SD_NOTE, "rows": rows,
          "new_domain": new if "added" in new else None}


def _draw(ax, label: str, entry: dict) -> None:
  pts = [p for p in entry["mean"] if p["mean"] is not None]
  if not pts:
    return
  x = [p["step"] for p in pts]
  y = [p["mean"] for p in pts]
  sd = [p["sd"] or 0.0 for p in pts]
  n = max(p["n"] for p in pts)
  (line,) = ax.plot(x, y, marker="o", markersize=3, label=f"{label} (n={n})")
  ax.fill_between(x, [a - b for a, b in zip(y, sd)], [a + b for a, b in zip(y, sd)],
                  color=line.get_color(), alpha=0.2, linewidth=0)


def plot(curves: dict, path: str, title: str = "") -> None:
  """paper_curves.png: validation Dice vs step, mean across seeds ± sd (shaded)."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  nd = curves.get("new_domain")
  fig = Figure(figsize=(13 if nd else 7, 4.8))
  FigureCanvasAgg(fig)
  axes = fig.subplots(1, 2 if nd else 1, squeeze=False)[0]
  special = {nd.get("added"), nd.get("independent")} if nd else set()
  for row, entry in curves["rows"].items():
    if row not in special:
      _draw(axes[0], row, entry)
  axes[0].set_title((title + ": " if title else "") + "validation mean Dice over domains")
  if nd:
    name = ",".join(nd["domains"])
    for kind, label in (("added", f"{name} added to separable"),
                        ("independent", f"independent {name} model")):
      if nd.get(kind):
        _draw(axes[1], label, curves["rows"][nd[kind]])
    axes[1].set_title(f"new domain: validation Dice of {name}")
  for ax in axes:
    ax.set_xlabel("step")
    ax.set_ylabel("Dice (mean across seeds ± sd)")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
      ax.legend(fontsize=8)
  fig.tight_layout()
  with io.atomic_path(path) as tmp:
    fig.savefig(tmp, dpi=110)
