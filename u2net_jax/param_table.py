"""`--mode=params`: parameter counts per collection, from the config alone.

Builds the model abstractly (`models.abstract_model`: no weights are allocated, so
paper-scale independent models cost nothing) and reads no data.
"""

from __future__ import annotations

import dataclasses
import os


from u2net_jax import config as config_lib
from u2net_jax import config_utils, io
from u2net_jax.model import models


def count(config, mode: str | None = None) -> dict:
  """`models.param_counts` of the config's model (optionally in another mode)."""
  specs = config_utils.validate(config)
  model_cfg = config_lib.model_config(config.model)
  if mode is not None:
    model_cfg = dataclasses.replace(model_cfg, mode=mode)
  model = models.abstract_model(specs, model_cfg)
  return models.param_counts(model)


def format_table(counts: dict, independent_total: int | None = None) -> str:
  """A fixed-width table: one row per collection, then the total."""
  rows = [("shared", counts["shared"])]
  rows += [(f"domain:{n}", c) for n, c in counts["per_domain"].items()]
  width = max(len(r[0]) for r in rows + [("total", 0)])
  lines = [f"mode: {counts['mode']}", f"{'collection':<{width}}  {'params':>12}"]
  lines += [f"{name:<{width}}  {c:>12,}" for name, c in rows]
  lines.append(f"{'total':<{width}}  {counts['total']:>12,}")
  if independent_total:
    pct = 100.0 * counts["total"] / independent_total
    lines.append(f"= {pct:.2f}% of {len(counts['per_domain'])} independent models "
                 f"({independent_total:,})")
  return "\n".join(lines)


def run(config, workdir: str) -> dict:
  """Prints the table and writes `<workdir>/params.json`; returns the counts."""
  counts = count(config)
  independent = count(config, "independent")["total"]
  print(format_table(counts, independent), flush=True)
  path = io.write_json(os.path.join(workdir, "params.json"), counts)
  print(f"wrote {path}")
  return counts
