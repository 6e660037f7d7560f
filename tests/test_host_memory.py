"""Returning freed heap to the OS (what keeps training's RSS down after the compile)."""

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


def test_rss_is_reported_in_megabytes():
  rss = host_memory.rss_mb()
  if sys.platform.startswith("linux"):
    assert 10 < rss < 1e6
  else:
    assert rss is None
