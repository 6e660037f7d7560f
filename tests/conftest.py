"""Test set-up: 8 virtual CPU devices (multi-device tests), quiet logs, one compile cache.

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
# Every program, however quick to compile: the subprocess tests start fresh
# interpreters that would otherwise recompile each sub-second program.
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

