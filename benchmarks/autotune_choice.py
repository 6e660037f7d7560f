"""The autotuner's choice and cost for the main command's model (BENCHMARKS.md).

Usage: python benchmarks/autotune_choice.py [--preset=] [--batch=2]

Runs `u2net_jax.model.autotune.tune` twice on the preset's model (training
batch per device, the preset's patch) with a fresh cache folder: the first
run measures, the second must reuse. Prints the timings and both wall times.
"""

import argparse
import json
import tempfile
import time

from experiments import five_domain
from u2net_jax import config as config_lib
from u2net_jax import config_utils
from u2net_jax.model import autotune


def main(argv=None) -> dict:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--preset", default="")
  ap.add_argument("--batch", type=int, default=2, help="batch per device")
  args = ap.parse_args(argv)
  cfg = config_lib.parse(five_domain.get_config(args.preset))
  specs = config_utils.validate(cfg)
  cache = tempfile.mkdtemp(prefix="autotune_")
  out = {}
  for run in ("first", "second"):
    t = time.time()
    tuned, report = autotune.tune(specs, cfg.model, args.batch, cfg.data.patch_size,
                                  cache_dir=cache)
    out[run] = {"seconds": time.time() - t, "depthwise_impl": tuned.depthwise_impl,
                "dense_impl": tuned.dense_impl,
                "cached": {k: r["cached"] for k, r in report.items()}}
    if run == "first":
      out["measurements"] = report
  print(json.dumps(out, indent=1))
  return out


if __name__ == "__main__":
  main()
