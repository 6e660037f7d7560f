"""Returning freed heap to the OS (what keeps training's RSS down after the compile)."""

import os
import subprocess
import sys

import numpy as np
import pytest

from u2net_jax import host_memory


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc and /proc are Linux's")
def test_freed_small_allocations_leave_the_resident_set():
  # ~400 MB in 8–32 KB blocks (below glibc's mmap threshold: heap, not mmap),
  # the last one kept so that the heap's top cannot shrink on its own.
  blocks = [np.ones(1000 + (i * 7) % 3000) for i in range(20000)]
  before = host_memory.rss_mb()
  del blocks[:-1]
  assert host_memory.release_free_memory()
  after = host_memory.rss_mb()
  assert before - after > 200, (before, after)


def test_malloc_statistics_follow_allocations():
  stats = host_memory.malloc_mb()
  if stats is None:
    pytest.skip("no glibc mallinfo2 here")
  blocks = [np.ones(2000) for _ in range(5000)]  # ~80 MB of 16 KB heap blocks
  grown = host_memory.malloc_mb()
  assert grown["in_use"] - stats["in_use"] > 60, (stats, grown)
  del blocks
  assert host_memory.malloc_mb()["in_use"] < grown["in_use"] - 60


def test_rss_is_reported_in_megabytes():
  rss = host_memory.rss_mb()
  if sys.platform.startswith("linux"):
    assert 10 < rss < 1e6
  else:
    assert rss is None


RESTART = """
import os
from u2net_jax import host_memory
print("pid", os.getpid(), os.environ.get("GLIBC_TUNABLES", ""), flush=True)
host_memory.restart_with_hugepages()
print("after", os.getpid(), os.environ.get("GLIBC_TUNABLES", ""))
"""


@pytest.mark.skipif(not host_memory.hugepages_wanted({}), reason="no THP-capable Linux here")
def test_restart_keeps_the_process_and_adds_the_huge_page_tunable():
  env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "U2NET_HUGEPAGES")}
  env["GLIBC_TUNABLES"] = "glibc.malloc.arena_max=4"  # the user's own tunables are kept
  out = subprocess.run([sys.executable, "-c", RESTART], env=env, capture_output=True,
                       text=True, timeout=60, check=True).stdout.split("\n")
  first = out[0].split()
  # Printed once before the restart (old environment), then by the restarted image.
  assert out[1] == f"pid {first[1]} glibc.malloc.arena_max=4:glibc.malloc.hugetlb=1"
  assert out[2] == f"after {first[1]} glibc.malloc.arena_max=4:glibc.malloc.hugetlb=1"


def test_restart_is_skipped_when_asked_or_already_set():
  assert not host_memory.hugepages_wanted({"U2NET_HUGEPAGES": "0"})
  assert not host_memory.hugepages_wanted({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"})
