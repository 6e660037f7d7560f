"""--mode=export: one self-contained folder per domain, and a loader that needs no Flax.

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
                                  resize, `rescale`), the post-processing
                                  decision, shapes, platforms and versions.

`load(dir)` deserializes the predictor for the current backend and returns a
`predict.Predictor`: `p(x)` runs windows, `p.predict_volume(image)` a whole
preprocessed volume, `predict.segment(image, spacing, p)` a raw scan. Only
jax and numpy run it; the model code is not imported.
"""

from __future__ import annotations

import datetime
import json
import os
import platform as platform_lib
import shutil
import uuid

import numpy as np

from u2net_jax import predict, rescale
from u2net_jax.errors import CheckpointError, ConfigError
from u2net_jax.plans import DomainPlan

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


def load(directory: str, *, domain: str = "", platform: str | None = None) -> predict.Predictor:
  """Loads an export folder for the current (or the given) platform.

  Args:
    directory: `W/export/<domain>`.
    domain: if given, must be the export's domain.
    platform: 'cpu', 'cuda' or 'tpu' (default: JAX's default backend).
  Returns:
    A `predict.Predictor` whose window function runs the deserialized program.
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
  return predict.Predictor(
      plan=plan, fn=lambda x: np.asarray(call(weights, np.asarray(x, np.float32))),
      overlap=float(inf.get("overlap", 0.5)), window_batch=int(inf.get("window_batch", 2)),
      mirror=bool(inf.get("mirror", False)), blend=str(inf.get("blend", "gaussian")),
      source_patch=tuple(int(s) for s in source_patch) if source_patch else None,
      decision=decision,
      step=int(meta.get("source", {}).get("step", 0)), source=os.path.abspath(directory))


# ----------------------------------------------------------------------------
# Writing exports (needs the model code).

def _versions() -> dict:
  import flax  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import jaxlib  # pylint: disable=g-import-not-at-top
  import u2net_jax  # pylint: disable=g-import-not-at-top
  return {"u2net_jax": u2net_jax.__version__, "jax": jax.__version__,
          "jaxlib": jaxlib.__version__, "flax": flax.__version__, "numpy": np.__version__,
          "python": platform_lib.python_version()}


def export_domain(config, workdir: str, spec, plan: DomainPlan, params, step: int, *,
                  decision: dict | None = None, platforms=PLATFORMS, log=print) -> str:
  """Writes `<workdir>/export/<spec.name>/` (atomically: built aside, then renamed).

  Args:
    config: the workdir's config.
    spec: the domain's DomainSpec.
    plan: its preprocessing plan.
    params: {"shared": State, "domains": {...}} of the universal model.
    step: checkpoint step.
    decision: the largest-component decision to store (None = unknown).
    platforms: lowering targets; 'cpu' must succeed, others are best effort.
  Returns:
    The export folder.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from u2net_jax import domain_model  # pylint: disable=g-import-not-at-top
  weights = domain_model.weights_of(params, spec, config.model)
  w_spec = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in weights.items()}
  x_spec = domain_model.window_spec(spec, plan.patch_size)
  root = os.path.join(workdir, "export")
  final = os.path.join(root, spec.name)
  tmp = os.path.join(root, f".tmp-{spec.name}-{uuid.uuid4().hex[:8]}")
  os.makedirs(tmp)
  try:
    files, errors = {}, {}
    for p in platforms:
      apply = domain_model.make_apply(spec, config.model, platform=p)
      try:
        exported = jax.export.export(jax.jit(apply), platforms=(p,))(w_spec, x_spec)
      except Exception as e:  # pylint: disable=broad-except — lowering is best effort off CPU
        if p == "cpu":
          raise
        errors[p] = f"{type(e).__name__}: {e}"[:500]
        log(f"  {spec.name}: no {p} predictor ({errors[p][:120]})")
        continue
      files[p] = predictor_file(p)
      with open(os.path.join(tmp, files[p]), "wb") as f:
        f.write(exported.serialize())
    np.savez(os.path.join(tmp, WEIGHTS_FILE), **weights)
    ev = config.eval
    source_patch = rescale.for_domain(config, spec.name)
    meta = {
        "format": FORMAT, "format_version": FORMAT_VERSION if source_patch else 1,
        "domain": spec.name,
        "plan": plan.to_dict(),
        "input": {"shape": ["b", *plan.patch_size, plan.in_channels], "dtype": "float32",
                  "layout": "(batch, D, H, W, channel), preprocessed intensities"},
        "output": {"shape": ["b", *plan.patch_size, plan.num_classes], "dtype": "float32",
                   "layout": "(batch, D, H, W, class) softmax probabilities"},
        "inference": {"overlap": float(ev.overlap), "window_batch": int(ev.window_batch),
                      "mirror": bool(ev.mirror), "gaussian_sigma": "patch / 8",
                      "blend": str(ev.get("blend", "gaussian")),
                      # The official resize: pad to >= source_patch, resize by
                      # patch_size / source_patch, windows, labels back (nearest).
                      "source_patch": list(source_patch) if source_patch else None},
        "postprocessing": {
            "rule": "keep the largest connected component of the classes whose "
                    "'apply' is true (it raised their mean validation Dice)",
            "classes": decision},
        "platforms": files, "platform_errors": errors, "weights": WEIGHTS_FILE,
        "num_weights": int(sum(v.size for v in weights.values())),
        "model": {k: config.model.get(k) for k in ("mode", "features_root", "num_levels",
                                                   "downsample", "compute_dtype",
                                                   "pool_per_axis")},
        "source": {"workdir": os.path.abspath(workdir), "step": int(step)},
        "versions": _versions(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    with open(os.path.join(tmp, META_FILE), "w") as f:
      json.dump(meta, f, indent=2)
    old = None
    if os.path.exists(final):
      old = f"{tmp}-old"
      os.replace(final, old)
    os.replace(tmp, final)
    if old:
      shutil.rmtree(old, ignore_errors=True)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return final


def run(config, workdir: str, *, domain: str = "", postprocess_mode: str = "auto",
        log=print) -> list[str]:
  """--mode=export: every domain of the workdir (or only `domain`)."""
  from u2net_jax import config_utils, domains, plans, train  # pylint: disable=g-import-not-at-top
  specs = config_utils.resolve_domains(config)
  chosen = [domains.lookup(specs, domain)] if domain else list(specs)
  plan_of = plans.load(workdir, config, chosen, log=log)
  _, _, params, _, step = train.restore_params(config, workdir, needs_data=False)
  out = []
  for spec in chosen:
    decision = None
    if postprocess_mode == "auto":
      predictor = predict.from_params(config, spec, plan_of[spec.name], params, step, workdir)
      decision = predict.ensure_decision(predictor, workdir, config, log=log)
    path = export_domain(config, workdir, spec, plan_of[spec.name], params, step,
                         decision=decision, log=log)
    log(f"exported {spec.name} (step {step}) to {path}")
    out.append(path)
  return out
