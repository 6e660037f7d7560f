"""Metrics logging from process 0: console, JSON lines and TensorBoard (no TF)."""

from __future__ import annotations

import json
import os
import platform
import sys
import time

import jax


def quiet_library_logs() -> None:
  """Keeps the console to the project's own progress lines.

  Orbax and TFDS log every save/load at INFO (and TFDS warns about each custom
  dataset config); JAX logs "Unable to initialize backend 'tpu'" on every CPU
  run. Orbax also logs a failed background save or an unreadable checkpoint
  at ERROR with tracebacks, which `u2net_jax.checkpoint` turns into one
  warning line or one CheckpointError.
  """
  import logging  # pylint: disable=g-import-not-at-top

  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
  logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)
  absl_logging.set_verbosity(absl_logging.ERROR)
  orbax_dir = os.sep + "orbax" + os.sep
  absl_logging.get_absl_handler().addFilter(lambda r: orbax_dir not in r.pathname)


class MetricLogger:
  """Writes scalars to `<workdir>/metrics.jsonl` and TensorBoard event files."""

  def __init__(self, workdir: str, *, enabled: bool | None = None, stream=sys.stdout):
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self.stream = stream
    self._jsonl = None
    self._tb = None
    if self.enabled:
      os.makedirs(workdir, exist_ok=True)
      self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
      try:
        from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
        self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
      except ImportError:  # optional
        self._tb = None

  def info(self, message: str) -> None:
    if self.enabled:
      print(message, file=self.stream, flush=True)

  def scalars(self, step: int, values: dict) -> None:
    if not self.enabled:
      return
    record = {"step": int(step), "time": time.time()}
    record.update({k: (float(v) if not isinstance(v, str) else v) for k, v in values.items()})
    self._jsonl.write(json.dumps(record) + "\n")
    self._jsonl.flush()
    if self._tb is not None:
      for k, v in values.items():
        if not isinstance(v, str):
          self._tb.add_scalar(k, float(v), int(step))

  @property
  def has_tensorboard(self) -> bool:
    """Whether this process writes TensorBoard events (process 0, tensorboardX installed)."""
    return self._tb is not None

  def image(self, step: int, tag: str, image) -> None:
    """One RGB picture, (H, W, 3) uint8, under `tag` in TensorBoard (no metrics.jsonl record)."""
    if self._tb is not None:
      self._tb.add_image(tag, image, int(step), dataformats="HWC")
      self._tb.flush()

  def close(self) -> None:
    if self._jsonl:
      self._jsonl.close()
    if self._tb is not None:
      self._tb.close()


def eta(seconds: float) -> str:
  seconds = max(0, int(seconds))
  return f"{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def machine_description() -> str:
  """'cpu, 2 cores, AMD EPYC ..., vector flags avx avx2, jax X' — for every timing we publish.

  Timings differ ~2× between AVX2-only and AVX-512 CPUs, so the flags are part
  of the figure.
  """
  import jax  # pylint: disable=g-import-not-at-top
  model, flags = platform.machine(), set()
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name") and model == platform.machine():
          model = line.split(":", 1)[1].strip()
        elif line.startswith("flags"):
          flags = set(line.split(":", 1)[1].split())
  except OSError:
    pass
  vec = " ".join(v for v in ("avx", "avx2", "avx512f") if v in flags) or "unknown"
  dev = jax.devices()[0]
  return (f"{dev.platform} ({dev.device_kind}), {os.cpu_count()} CPU cores, {model}, "
          f"vector flags: {vec}, jax {jax.__version__}")
