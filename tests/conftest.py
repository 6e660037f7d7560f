"""Test set-up: 8 virtual CPU devices (multi-device tests), quiet logs, one compile cache,
LLVM optimization level 0 and XLA's per-op emitters for the tiny programs.

Every test process and every `run.py` subprocess it starts share one JAX
persistent compilation cache for the session (they inherit the environment),
so the smoke programs are compiled once, not once per test module.
"""

import atexit
import os
import shutil
import tempfile

# Must happen before JAX is imported anywhere.
os.environ.setdefault("JAX_NUM_CPU_DEVICES", "8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _CACHE = tempfile.mkdtemp(prefix="u2net_tests_jax_cache_")
  atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE
# The tests' programs are tiny and compiled once each: compile time is most of
# the suite. LLVM's optimization level 0 compiles them faster for the same
# values (no fast-math at any level; every test passes either way): the suite
# measured 17.4 → 14.6 CPU-min (README, "Tests"). Training runs keep level 3.
# The flags training would run with here, before the tests' own below: the
# tests that assert training's exact bits compile with these.
os.environ.setdefault("U2NET_TRAINING_XLA_FLAGS", os.environ.get("XLA_FLAGS", ""))
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                             + " --xla_backend_optimization_level=0").strip()
# XLA's older per-op emitters instead of its MLIR fusion emitters: the tests'
# tiny programs compile 1.6–2.6× faster (a 4³ two-level model's gradient: 2.6 →
# 1.0 s, with `shift` convs 5.6 → 3.4 s); values equal up to float rounding
# (reductions may be ordered differently), so the tests of training's
# exact bits run with U2NET_TRAINING_XLA_FLAGS (tests/test_depthwise.py).
if "xla_cpu_use_fusion_emitters" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] += " --xla_cpu_use_fusion_emitters=false"
# Every program, however quick to compile: the subprocess tests start fresh
# interpreters that would otherwise recompile each sub-second program.
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

