"""--mode=export: one self-contained folder per domain (read back by `exported.load`, no Flax).

The folder layout and the loader are in `exported.py`; this module writes it
(it needs the model code: `domain_model.make_apply` is what is serialized).
"""

from __future__ import annotations

import datetime
import json
import os
import platform as platform_lib
import shutil
import uuid

import numpy as np

from u2net_jax import config as config_lib
from u2net_jax.data.plans import DomainPlan
from u2net_jax.infer import predict
from u2net_jax.infer.exported import (FORMAT, FORMAT_VERSION, META_FILE, PLATFORMS,
                                      WEIGHTS_FILE, predictor_file)

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

  from u2net_jax import config_utils  # pylint: disable=g-import-not-at-top
  from u2net_jax.model import domain_model  # pylint: disable=g-import-not-at-top
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
    source_patch = config_utils.source_patch_for(config, spec.name)
    meta = {
        "format": FORMAT, "format_version": FORMAT_VERSION if source_patch else 1,
        "domain": spec.name,
        "plan": plan.to_dict(),
        "input": {"shape": ["b", *plan.patch_size, plan.in_channels], "dtype": "float32",
                  "layout": "(batch, D, H, W, channel), preprocessed intensities"},
        "output": {"shape": ["b", *plan.patch_size, plan.num_classes], "dtype": "float32",
                   "layout": "(batch, D, H, W, class) softmax probabilities"},
        "inference": {"overlap": ev.overlap, "window_batch": ev.window_batch,
                      "mirror": ev.mirror, "gaussian_sigma": "patch / 8",
                      "blend": ev.blend,
                      # The official resize: pad to >= source_patch, resize by
                      # patch_size / source_patch, windows, labels back (nearest).
                      "source_patch": list(source_patch) if source_patch else None},
        "postprocessing": {
            "rule": "keep the largest connected component of the classes whose "
                    "'apply' is true (it raised their mean validation Dice)",
            "classes": decision},
        "platforms": files, "platform_errors": errors, "weights": WEIGHTS_FILE,
        "num_weights": int(sum(v.size for v in weights.values())),
        "model": {k: getattr(config.model, k) for k in ("mode", "features_root", "num_levels",
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
  from u2net_jax import config_utils, domains  # pylint: disable=g-import-not-at-top
  from u2net_jax.data import plans  # pylint: disable=g-import-not-at-top
  from u2net_jax.train import train  # pylint: disable=g-import-not-at-top
  config = config_lib.parse(config)
  specs = config_utils.resolve_domains(config)
  chosen = [domains.lookup(specs, domain)] if domain else list(specs)
  plan_of = plans.load(workdir, config, chosen, log=log)
  restored = train.restore_params(config, workdir, needs_data=False)
  params, step = restored.params, restored.step
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
