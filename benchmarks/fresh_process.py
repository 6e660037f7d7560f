"""Runs a benchmark script once per variant, each in a fresh process (fresh heap, cold cache)."""

from __future__ import annotations

import subprocess
import sys


def run_variants(script: str, variants: list[str], env: dict | None, out: str = "") -> None:
  """`python script --one=V` per variant V: prints its last stdout line (JSON), appends it to `out`.

  Raises SystemExit with the child's stderr tail when a variant fails.
  """
  for variant in variants:
    proc = subprocess.run([sys.executable, script, f"--one={variant}"], env=env,
                          capture_output=True, text=True)
    if proc.returncode:
      raise SystemExit(f"variant {variant} failed:\n{proc.stderr[-3000:]}")
    line = proc.stdout.strip().splitlines()[-1]
    print(line, flush=True)
    if out:
      with open(out, "a") as f:
        f.write(line + "\n")
