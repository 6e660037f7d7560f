"""Reading an export folder (`--mode=export` writes it, `export.py`): no Flax, no model code.

`W/export/<domain>/` holds
  predictor.<platform>.jaxexport  `jax.export` serialization of
                                  apply(weights, x) -> probabilities, with a
                                  symbolic batch dimension: x (b, P0, P1, P2, C)
                                  float32 → (b, P0, P1, P2, K); one file per
                                  platform (cpu always; cuda, tpu where lowering
                                  succeeds — no such hardware is needed);
  weights.npz                     the shared weights + this domain's, no other
                                  domain's, keyed by parameter path;
  meta.json                       the preprocessing plan (spacing,
                                  normalization, CT stats, channel and class
                                  names, patch size), sliding-window settings
                                  (incl. the source patch of the official
                                  resize, `data/rescale.py`), the post-processing
                                  decision, shapes, platforms and versions.

`load(dir)` deserializes the predictor for the current backend and returns a
`Predictor`: `p(x)` runs windows, `p.predict_volume(image)` a whole
preprocessed volume, `predict.segment(image, spacing, p)` a raw scan. Only
jax and numpy run it; the model code is not imported (tests/test_layout.py).
"""

from __future__ import annotations

import json
import os

import numpy as np

from u2net_jax.data.plans import DomainPlan
from u2net_jax.errors import CheckpointError, ConfigError
from u2net_jax.infer.predictor import Predictor


FORMAT = "u2net_jax.export"
# 2: meta['inference']['source_patch'] may be set (the loader must resize);
# exports without one are still written as version 1.
FORMAT_VERSION = 2
META_FILE = "meta.json"
WEIGHTS_FILE = "weights.npz"
PLATFORMS = ("cpu", "cuda", "tpu")


def predictor_file(platform: str) -> str:
  return f"predictor.{platform}.jaxexport"


def is_export_dir(path: str) -> bool:
  """True if `path` is a folder written by `export_domain`."""
  try:
    with open(os.path.join(path, META_FILE)) as f:
      return json.load(f).get("format") == FORMAT
  except (OSError, ValueError, AttributeError):
    return False


def read_meta(directory: str) -> dict:
  path = os.path.join(directory, META_FILE)
  try:
    with open(path) as f:
      meta = json.load(f)
  except (OSError, ValueError) as e:
    raise CheckpointError(f"{path}: not a readable export meta file ({e}).") from None
  if meta.get("format") != FORMAT:
    raise CheckpointError(f"{directory} is not a u2net_jax export (no {META_FILE} of "
                          f"format {FORMAT!r}).")
  if int(meta.get("format_version", 0)) > FORMAT_VERSION:
    raise CheckpointError(f"{directory}: export format version {meta['format_version']} is "
                          f"newer than this code's {FORMAT_VERSION}.")
  return meta


def read_plan(directory: str, domain: str = "") -> DomainPlan:
  """The export's preprocessing plan; ConfigError if `domain` names another domain."""
  meta = read_meta(directory)
  if domain and domain != meta["domain"]:
    raise ConfigError(f"Unknown domain {domain!r}: the export {directory} holds only "
                      f"{meta['domain']!r}.")
  return DomainPlan.from_dict(meta["plan"])


def _backend_platform() -> str:
  import jax  # pylint: disable=g-import-not-at-top
  backend = jax.default_backend()
  return "cuda" if backend == "gpu" else backend


def load(directory: str, *, domain: str = "", platform: str | None = None) -> Predictor:
  """Loads an export folder for the current (or the given) platform.

  Args:
    directory: `W/export/<domain>`.
    domain: if given, must be the export's domain.
    platform: 'cpu', 'cuda' or 'tpu' (default: JAX's default backend).
  Returns:
    A `Predictor` whose window function runs the deserialized program.
  """
  import jax  # pylint: disable=g-import-not-at-top
  meta = read_meta(directory)
  plan = read_plan(directory, domain)
  platform = platform or _backend_platform()
  files = meta.get("platforms", {})
  if platform not in files:
    raise CheckpointError(f"{directory} has no predictor for platform {platform!r}; it has "
                          f"{sorted(files)}.")
  with open(os.path.join(directory, files[platform]), "rb") as f:
    exported = jax.export.deserialize(bytearray(f.read()))
  with np.load(os.path.join(directory, meta.get("weights", WEIGHTS_FILE))) as npz:
    weights = jax.device_put({k: npz[k] for k in npz.files})
  call = jax.jit(exported.call)
  inf = meta.get("inference", {})
  source_patch = inf.get("source_patch")
  decision = meta.get("postprocessing", {}).get("classes")
  return Predictor(
      plan=plan, fn=lambda x: np.asarray(call(weights, np.asarray(x, np.float32))),
      overlap=float(inf.get("overlap", 0.5)), window_batch=int(inf.get("window_batch", 2)),
      mirror=bool(inf.get("mirror", False)), blend=str(inf.get("blend", "gaussian")),
      source_patch=tuple(int(s) for s in source_patch) if source_patch else None,
      decision=decision,
      step=int(meta.get("source", {}).get("step", 0)), source=os.path.abspath(directory))
