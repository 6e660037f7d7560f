"""Test set-up: 8 virtual CPU devices (multi-device tests), quiet logs, one compile cache,
LLVM optimization level 0 for the tiny programs.

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
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                             + " --xla_backend_optimization_level=0").strip()
# Every program, however quick to compile: the subprocess tests start fresh
# interpreters that would otherwise recompile each sub-second program.
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

