"""The CPU a timing was taken on (no JAX or torch import: both benchmark venvs use it).

Timings differ ~2× between AVX2-only and AVX-512 CPUs, so every benchmark
JSON records the model string and the vector flags.
"""

from __future__ import annotations

import datetime
import os
import platform


def _cpuinfo_field(name: str) -> str | None:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith(name):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return None


def cpu_model() -> str:
  return _cpuinfo_field("model name") or platform.processor()


def cpu_vector_flags() -> list:
  """Which of avx, avx2, avx512f the CPU has."""
  have = set((_cpuinfo_field("flags") or "").split())
  return [v for v in ("avx", "avx2", "avx512f") if v in have]


def machine() -> dict:
  """The machine and Python of a timing, and the load it ran under (every benchmark JSON)."""
  return {
      "python_version": platform.python_version(),
      "cpu_model": cpu_model(),
      "cpu_vector_flags": cpu_vector_flags(),
      "cpu_count": os.cpu_count(),
      "load_avg_1m": os.getloadavg()[0],
      "date": datetime.date.today().isoformat(),
  }
