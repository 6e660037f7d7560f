"""The paper table from the runs' summaries: mean ± sd rows, the new-domain row, markdown.

Pure functions of what `paper_table.collect` read from the workdir (no
training, no files): `build_table` gives results/paper_table.json's object,
`render_markdown` results/paper_table.md. sd is the sample standard
deviation (ddof=1); one complete seed shows its value alone.
"""

from __future__ import annotations

from experiments import paper_curves

SETTINGS = ("independent", "shared", "series_adapter", "parallel_adapter", "separable")
# Table order of the setting rows.
ROWS = SETTINGS + ("separable_equal_time",)
VECTOR_FLAGS = ("avx", "avx2", "avx512f")


def _dice(summary: dict) -> dict:
  return {n: float(d["mean_dice"]) for n, d in summary["domains"].items()}


def table_row(name: str, entry: dict, n_seeds: int, indep_params) -> dict:
  """One setting row: mean ± sd across the complete seeds."""
  done = {k: s for k, s in entry["summaries"].items() if s is not None}
  dice = {k: _dice(s) for k, s in done.items()}
  domains = list(next(iter(dice.values()))) if dice else []
  params = next(iter(done.values()))["params"]["total"] if done else None
  return {
      "setting": name, "steps": entry["steps"], "seeds_complete": sorted(done),
      "n_complete": len(done), "n_seeds": n_seeds, "params": params,
      "params_pct_of_independent": (100.0 * params / indep_params
                                    if params and indep_params else None),
      "dice": {n: paper_curves.mean_sd(d[n] for d in dice.values()) for n in domains},
      "mean_dice": paper_curves.mean_sd(sum(d.values()) / len(d) for d in dice.values()),
      "train_seconds": paper_curves.mean_sd(s.get("train_seconds") for s in done.values())["mean"],
      "per_seed": {str(k): {"step": s["step"], "dice": dice[k],
                            "mean_dice": sum(dice[k].values()) / len(dice[k]),
                            "train_seconds": s.get("train_seconds")} for k, s in done.items()},
  }


def new_domain_row(added: dict, independent: dict | None, domains, n_seeds: int) -> dict:
  """The new-domain row: seeds where the added (and independent) run are complete."""
  ind = independent["summaries"] if independent else {}
  seeds = sorted(k for k, s in added["summaries"].items()
                 if s is not None and (not independent or ind.get(k) is not None))
  ext = added["summaries"][seeds[0]]["extension"]["new_domains"] if seeds else {}
  out = {}
  for n in domains:
    out[n] = {
        "added": paper_curves.mean_sd(_dice(added["summaries"][k])[n] for k in seeds),
        "independent": (paper_curves.mean_sd(_dice(ind[k])[n] for k in seeds)
                        if independent else None),
        "params_added": ext[n]["params_added"] if ext else None,
        "params_added_pct_of_independent": (ext[n]["params_added_pct_of_independent"]
                                            if ext else None),
        "per_seed": {str(k): {"added": _dice(added["summaries"][k])[n],
                              "independent": _dice(ind[k])[n] if independent else None}
                     for k in seeds}}
  return {"steps": added["steps"], "seeds_complete": seeds, "n_complete": len(seeds),
          "n_seeds": n_seeds, "domains": out}


def build_table(by_row: dict, new_domains, meta: dict) -> dict:
  """The JSON table from `collect`'s rows; `meta` holds seeds, command, machine, ..."""
  n = len(meta["seeds"])
  indep = by_row.get("independent")
  indep_params = None
  if indep:
    done = [s for s in indep["summaries"].values() if s is not None]
    indep_params = done[0]["params"]["total"] if done else None
  rows = [table_row(r, by_row[r], n, indep_params) for r in ROWS if r in by_row]
  kinds = {e["kind"]: e for e in by_row.values()}
  nd = (new_domain_row(kinds["added"], kinds.get("independent"), new_domains, n)
        if "added" in kinds else None)
  domains = []
  for r in rows:
    domains += [d for d in r["dice"] if d not in domains]
  return {**meta, "sd": paper_curves.SD_NOTE, "domains": domains, "rows": rows,
          "new_domain": nd}


def _pm(stat: dict | None) -> str:
  if not stat or not stat["n"]:
    return "-"
  if stat["sd"] is None:
    return f"{stat['mean']:.3f}"
  return f"{stat['mean']:.3f} ± {stat['sd']:.3f}"


def _setting_lines(table: dict) -> list[str]:
  domains = table["domains"]
  head = ["setting", "seeds", "steps", "train time", "params", "% of independent", *domains,
          "mean"]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for r in table["rows"]:
    pct, secs = r["params_pct_of_independent"], r["train_seconds"]
    lines.append("| " + " | ".join([
        r["setting"], f"{r['n_complete']}/{r['n_seeds']}", f"{r['steps']:,}",
        "-" if secs is None else f"{secs / 60:.1f} min",
        "-" if r["params"] is None else f"{r['params']:,}",
        "-" if pct is None else f"{pct:.2f} %",
        *[_pm(r["dice"].get(d)) for d in domains],
        "-" if not r["n_complete"] else f"**{_pm(r['mean_dice'])}**"]) + " |")
  return lines


def _new_domain_lines(nd: dict) -> list[str]:
  lines = ["", "New domain added to the separable model of the same seed (shared weights and "
           "old domains frozen; old domains' predictions bit-identical), against an "
           "independent model with the same steps:", "",
           "| domain | seeds | steps | Dice (added) | Dice (independent model) | params added "
           "| % of one independent model |", "|---|---|---|---|---|---|---|"]
  for n, r in nd["domains"].items():
    pct, added = r["params_added_pct_of_independent"], r["params_added"]
    lines.append(f"| {n} | {nd['n_complete']}/{nd['n_seeds']} | {nd['steps']:,} | "
                 f"{_pm(r['added'])} | {_pm(r['independent'])} | "
                 f"{'-' if added is None else f'{added:,}'} | "
                 f"{'-' if pct is None else f'{pct:.2f} %'} |")
  return lines


def render_markdown(table: dict) -> str:
  """results/paper_table.md."""
  seeds = ", ".join(map(str, table["seeds"]))
  flags_ = table["cpu_vector_flags"]
  absent = [f for f in VECTOR_FLAGS if f not in flags_]
  lines = [f"# 3D U²-Net comparison ({table['preset']} preset, seeds {seeds})", "",
           f"Command: `{table['command']}`  ",
           f"Machine: {table['machine']}; CPU vector flags: {', '.join(flags_) or 'none'}"
           + (f" (no {', '.join(absent)})" if absent else "") + f"; date {table['date']}.", "",
           "Each value: mean ± sample standard deviation (ddof=1) across the complete seeds "
           "(one complete seed: its value alone); `seeds`: complete / asked for.", "",
           *_setting_lines(table), "",
           "Train time: mean per run of the training loop (`train_seconds`: steps and "
           "checkpoint saves; no compile, no evaluation); Dice: mean over each domain's "
           "validation cases and "
           "classes, at the last step."]
  if any(r["setting"] == "separable_equal_time" for r in table["rows"]):
    lines += ["`separable_equal_time`: the separable model trained for more steps, in "
              "about the CPU time one dense setting needs for the shared budget."]
  if table.get("new_domain"):
    lines += _new_domain_lines(table["new_domain"])
  inc = table["incomplete_runs"]
  lines += ["", (f"Incomplete runs ({len(inc)}, not in the means): "
                 + ", ".join(f"`{r}`" for r in inc)) if inc else "All runs complete.",
            "Curves: paper_curves.png / paper_curves.json."]
  return "\n".join(lines) + "\n"
