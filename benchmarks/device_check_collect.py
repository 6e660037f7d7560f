"""benchmarks/device_check.sh's helpers: the export reload, and the one-JSON collector.

  python benchmarks/device_check_collect.py reload --export_dir=W/export --out=FILE
  python benchmarks/device_check_collect.py collect --parts=DIR --workdir=W --out=FILE ...

`reload` loads each domain's export folder with `u2net_jax.infer.exported.load`
(jax and numpy only), predicts one window batch and one whole volume of zeros
and asserts their shapes. `collect` gathers every part's exit code, seconds,
JSON result and (if it failed) log tail from DIR (NAME.rc, NAME.ms, NAME.log,
NAME.json as device_check.sh writes them) into one JSON object (COLLECT_KEYS).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time

COLLECT_KEYS = ("date", "preset", "impls", "backend", "devices", "total_seconds", "ok",
                "parts", "host")
PART_KEYS = ("rc", "seconds", "timed_out", "result")


def reload(export_dir: str, out: str) -> dict:
  """Loads every domain under `export_dir`; one zero window batch and one zero volume each."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  from u2net_jax.infer import exported  # pylint: disable=g-import-not-at-top

  domains = sorted(d for d in os.listdir(export_dir)
                   if exported.is_export_dir(os.path.join(export_dir, d)))
  if not domains:
    raise SystemExit(f"no export folder under {export_dir}")
  result = {"backend": jax.default_backend(), "domains": {}}
  for name in domains:
    t0 = time.perf_counter()
    pred = exported.load(os.path.join(export_dir, name), domain=name)
    load_s = time.perf_counter() - t0
    patch, channels = tuple(pred.plan.patch_size), pred.plan.in_channels
    classes = pred.plan.num_classes
    t0 = time.perf_counter()
    probs = pred(np.zeros((1, *patch, channels), np.float32))
    window_s = time.perf_counter() - t0
    assert probs.shape == (1, *patch, classes), (probs.shape, patch, classes)
    assert np.all(np.isfinite(probs)), "non-finite probabilities"
    shape = tuple(2 * p - p // 2 for p in patch)  # a volume of several windows
    t0 = time.perf_counter()
    labels, _ = pred.predict_volume(np.zeros((*shape, channels), np.float32))
    volume_s = time.perf_counter() - t0
    assert labels.shape == shape, (labels.shape, shape)
    result["domains"][name] = {
        "patch": list(patch), "channels": channels, "classes": classes,
        "window_probabilities_shape": list(probs.shape), "volume_shape": list(shape),
        "labels_shape": list(labels.shape), "load_s": load_s, "window_s": window_s,
        "volume_s": volume_s}
  with open(out, "w") as f:
    json.dump(result, f, indent=1)
  print(json.dumps(result))
  return result


def _read(path: str, parse=str):
  try:
    with open(path) as f:
      text = f.read().strip()
  except OSError:
    return None
  try:
    return parse(text)
  except ValueError:
    return None


def _json_last_line(text: str):
  """The last line of `text` that parses as a JSON object (None if none)."""
  for line in reversed(text.splitlines()):
    line = line.strip()
    if line.startswith("{"):
      try:
        return json.loads(line)
      except ValueError:
        continue
  return None


def collect_part(parts: str, name: str) -> dict:
  """{rc, seconds, timed_out, result, log_tail (failures only)} of one part."""
  rc = _read(os.path.join(parts, f"{name}.rc"), int)
  ms = _read(os.path.join(parts, f"{name}.ms"), int)
  log = _read(os.path.join(parts, f"{name}.log")) or ""
  result = _read(os.path.join(parts, f"{name}.json"), json.loads)
  if result is None and rc == 0:
    result = _json_last_line(log)
  out = {"rc": rc, "seconds": None if ms is None else ms / 1000,
         "timed_out": rc in (124, 137), "result": result}
  if rc != 0:
    out["log_tail"] = log[-3000:]
  return out


def collect(parts: str, workdir: str, preset: str, impls: list, total_seconds: float) -> dict:
  names = ["devices"] + [f"bench_{i}" for i in impls] + ["train", "export", "reload"]
  got = {n: collect_part(parts, n) for n in names}
  summary = _read(os.path.join(workdir, "eval", "summary.json"), json.loads)
  if summary is not None:
    got["train"]["result"] = {
        "step": summary.get("step"), "train_seconds": summary.get("train_seconds"),
        "compile_seconds": summary.get("compile_seconds"),
        "mean_dice": {n: r.get("mean_dice") for n, r in summary.get("domains", {}).items()}}
  dev = got["devices"]["result"] or {}
  return {
      "date": datetime.date.today().isoformat(),
      "preset": preset,
      "impls": list(impls),
      "backend": dev.get("backend"),
      "devices": dev.get("devices"),
      "jax_version": dev.get("jax_version"),
      "total_seconds": total_seconds,
      "ok": all(p["rc"] == 0 for p in got.values()),
      "parts": got,
      "host": platform.node(),
      "python_version": platform.python_version(),
  }


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  sub = ap.add_subparsers(dest="cmd", required=True)
  r = sub.add_parser("reload")
  r.add_argument("--export_dir", required=True)
  r.add_argument("--out", required=True)
  c = sub.add_parser("collect")
  c.add_argument("--parts", required=True)
  c.add_argument("--workdir", required=True)
  c.add_argument("--preset", required=True)
  c.add_argument("--impls", required=True, help="space-separated")
  c.add_argument("--total_seconds", type=float, required=True)
  c.add_argument("--out", required=True)
  args = ap.parse_args(argv)
  if args.cmd == "reload":
    reload(args.export_dir, args.out)
    return 0
  result = collect(args.parts, args.workdir, args.preset, args.impls.split(), args.total_seconds)
  with open(args.out, "w") as f:
    json.dump(result, f, indent=1)
    f.write("\n")
  print(json.dumps({k: result[k] for k in ("backend", "devices", "total_seconds", "ok")}))
  return 0 if result["ok"] else 1


if __name__ == "__main__":
  sys.exit(main())
