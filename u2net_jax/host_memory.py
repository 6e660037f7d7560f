"""Host (CPU) memory of the process: give freed heap pages back to the OS.

Compiling the train program makes XLA allocate ~1.6 GB of host heap (its HLO
passes and LLVM code generation, partly in compiler threads, each with its
own glibc arena). Freed, those pages stay in glibc's arenas, so the process's
resident set stays that much higher while the step's buffers (1.9 GB on the
`cpu` preset) are allocated on top of it. `malloc_trim(0)` returns them:
`benchmarks/bench.py --preset=cpu` peak RSS 3,966 → 2,9xx MB (BENCHMARKS.md).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc


@functools.cache
def _malloc_trim():
  """glibc's malloc_trim, or None (musl, macOS, Windows: nothing to call)."""
  name = ctypes.util.find_library("c")
  if not name:
    return None
  try:
    return ctypes.CDLL(name).malloc_trim
  except (OSError, AttributeError):
    return None


def release_free_memory() -> bool:
  """Collects garbage, then returns free heap pages to the OS; False where libc cannot."""
  gc.collect()
  trim = _malloc_trim()
  if trim is None:
    return False
  trim(0)
  return True


def rss_mb() -> float | None:
  """The process's resident set now, MB (Linux /proc; None elsewhere)."""
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith("VmRSS:"):
          return int(line.split()[1]) / 1024
  except OSError:
    pass
  return None
