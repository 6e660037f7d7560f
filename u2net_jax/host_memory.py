"""Host (CPU) memory of the process: huge pages for the step's buffers, freed heap back to the OS.

XLA's CPU runtime maps fresh memory for a train step's temporaries every
step (1.86 GB on the `cpu` preset: ~476,000 4 KiB page faults, each page
zeroed by the kernel on first touch). With glibc's
`GLIBC_TUNABLES=glibc.malloc.hugetlb=1` (glibc ≥ 2.35; transparent huge
pages in `madvise` or `always` mode) those come in 2 MiB pages: ~3,000
faults, and the step 1.58–1.65 → 1.32–1.33 s (BENCHMARKS.md, "Host memory").
glibc reads tunables only at start-up, so `run.py` restarts itself once with
it (`restart_with_hugepages`; `U2NET_HUGEPAGES=0` keeps the environment).

Compiling the train program makes XLA allocate ~1.6 GB of host heap (its HLO
passes and LLVM code generation, partly in compiler threads, each with its
own glibc arena). Freed, those pages stay in glibc's arenas, so the process's
resident set stays that much higher while the step's buffers (1.9 GB on the
`cpu` preset) are allocated on top of it. `malloc_trim(0)` returns them:
`benchmarks/bench.py --preset=cpu` peak RSS 3,949 → 3,026 MB (BENCHMARKS.md;
without huge pages that also made the step 4 % slower, with them it does not).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
import os
import sys

HUGEPAGES_TUNABLE = "glibc.malloc.hugetlb=1"
_THP_MODE = "/sys/kernel/mm/transparent_hugepage/enabled"


def _thp_mode() -> str:
  """The kernel's transparent-huge-page mode ('always', 'madvise', 'never'; '' if unknown)."""
  try:
    with open(_THP_MODE) as f:
      text = f.read()
  except OSError:
    return ""
  return text[text.find("[") + 1:text.find("]")] if "[" in text else ""


def hugepages_wanted(environ=None) -> bool:
  """Whether `restart_with_hugepages` would restart a process with this environment."""
  environ = os.environ if environ is None else environ
  return (sys.platform.startswith("linux") and environ.get("U2NET_HUGEPAGES", "1") != "0"
          and "glibc.malloc.hugetlb" not in environ.get("GLIBC_TUNABLES", "")
          and _thp_mode() in ("always", "madvise"))


def restart_with_hugepages() -> None:
  """Re-executes this process (same interpreter and arguments, same PID) with huge-page malloc.

  Returns without doing anything where it does not apply (not Linux, THP
  'never', already set, `U2NET_HUGEPAGES=0`) or where the restart fails.
  Call it first thing, before anything is printed or imported that is slow.
  """
  if not hugepages_wanted():
    return
  tunables = os.environ.get("GLIBC_TUNABLES", "")
  env = dict(os.environ, GLIBC_TUNABLES=f"{tunables}:{HUGEPAGES_TUNABLE}" if tunables
             else HUGEPAGES_TUNABLE)
  sys.stdout.flush()
  sys.stderr.flush()
  try:
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
  except OSError:
    return


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


def peak_rss_mb() -> float:
  """The process's peak resident set so far, MB (ru_maxrss: KiB on Linux, bytes on macOS)."""
  import resource  # pylint: disable=g-import-not-at-top — not on Windows
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  return peak / 2 ** 20 if sys.platform == "darwin" else peak / 1024


def huge_pages_on() -> bool:
  """Whether this process started with glibc's huge-page malloc (`restart_with_hugepages`)."""
  return HUGEPAGES_TUNABLE in os.environ.get("GLIBC_TUNABLES", "")


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


class _MallInfo2(ctypes.Structure):
  _fields_ = [(name, ctypes.c_size_t) for name in (
      "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
      "fordblks", "keepcost")]


def malloc_mb() -> dict | None:
  """glibc's heap: {'in_use': MB allocated, 'free': MB free but kept in its arenas}.

  Free memory is resident only where it was touched and not trimmed; what
  `release_free_memory` cannot return is what lies between live blocks.
  None where libc has no `mallinfo2` (glibc < 2.33, musl, macOS, Windows).
  """
  name = ctypes.util.find_library("c")
  try:
    fn = ctypes.CDLL(name).mallinfo2 if name else None
  except (OSError, AttributeError):
    fn = None
  if fn is None:
    return None
  fn.restype = _MallInfo2
  info = fn()
  return {"in_use": (info.uordblks + info.hblkhd) / 2 ** 20, "free": info.fordblks / 2 ** 20}
