"""The benchmark presets and the models, configs and train step they build.

Shared by `bench.py` (timed runs), `paper_analyze.py` (compile-only
analysis), `step_memory.py` and `compile_profile.py` (the `cpu` preset's
step under variants). The presets are fixed so that results compare over
time and against other frameworks (`bench.py`'s docstring lists them).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

from experiments import five_domain
from u2net_jax.domains import DomainSpec
from u2net_jax.model import models
from u2net_jax.train import train

DOMAINS = ("heart", "liver", "hippocampus", "prostate", "pancreas")

PRESETS = {
    "cpu": dict(features_root=16, num_levels=4, patch=64, batch_per_device=2,
                compute_dtype="float32", window_volume=0),
    "gpu": dict(features_root=16, num_levels=6, patch=128, batch_per_device=2,
                compute_dtype="bfloat16", window_volume=256),
    "tpu": dict(features_root=16, num_levels=6, patch=128, batch_per_device=2,
                compute_dtype="bfloat16", window_volume=256),
    "smoke": dict(features_root=4, num_levels=3, patch=16, batch_per_device=2,
                  compute_dtype="float32", window_volume=32),
    "paper": dict(features_root=16, num_levels=6, patch=128, batch_per_device=2,
                  compute_dtype="bfloat16", window_volume=256),
}

# The MSD tasks' (input channels, classes): what the paper's five domains need.
MSD_SHAPES = {"heart": (1, 2), "liver": (1, 3), "hippocampus": (1, 3), "prostate": (2, 3),
              "pancreas": (1, 3)}


def make_config(preset: str, impl: str, dense_impl: str = "auto", remat: bool = False):
  """The five-domain config with the preset's model and a plain-Adam, CE step.

  `paper`: the `msd` preset's model and train settings (its loss, optimizer,
  dense downsampling), with the preset's sizes and bfloat16 compute.
  """
  p = PRESETS[preset]
  c = five_domain.get_config("msd" if preset == "paper" else "")
  c.model.features_root = p["features_root"]
  c.model.num_levels = p["num_levels"]
  c.model.compute_dtype = p["compute_dtype"]
  c.model.depthwise_impl = impl
  c.model.dense_impl = dense_impl
  c.model.remat = remat
  c.data.patch_size = (p["patch"],) * 3
  if preset == "paper":
    return c
  c.model.mode = "separable"
  # The PyTorch reference's model (torch_reference.py): separable downsampling
  # (the default preset's is dense since 2026-12-01).
  c.model.downsample = "separable"
  c.train.loss = "ce"
  # Plain Adam (no weight decay, no clipping), as in the PyTorch reference.
  c.train.weight_decay = 0.0
  c.train.weight_decay_domain = -1.0
  c.train.weight_decay_mode = "l2"
  c.train.grad_clip = 0.0
  c.train.grad_accum = 1
  return c


def domain_specs(patch: int, preset: str = "") -> tuple[DomainSpec, ...]:
  """Five domains of 1 channel and 2 classes; `paper`: the MSD tasks' counts (MSD_SHAPES)."""
  shapes = MSD_SHAPES if preset == "paper" else {n: (1, 2) for n in DOMAINS}
  return tuple(DomainSpec(name=n, channel_names=tuple(f"ch{i}" for i in range(shapes[n][0])),
                          class_names=("background",) + tuple(
                              f"class{k}" for k in range(1, shapes[n][1])),
                          patch_size=(patch,) * 3) for n in DOMAINS)


class CpuStep(NamedTuple):
  """The `cpu` preset's train step before compilation (for step_memory / compile_profile)."""
  model: models.U2Net
  state: dict
  step_fn: Callable
  mesh: object
  batch: int
  patch: tuple[int, int, int]
  tcfg: object  # config.train


def cpu_step(remat: bool = False) -> CpuStep:
  """The `cpu` preset's model, train state and step with `fused` / `shift` convolutions fixed."""
  config = make_config("cpu", "fused", "shift", remat=remat)
  mesh = train.make_mesh(0)
  batch, patch = 2, (64, 64, 64)
  config.train.batch_size = batch
  model, parts, state, tx_s, tx_d = train.build_train_state(
      config, domain_specs(patch[0], "cpu"), mesh)
  return CpuStep(model, state, train.make_train_step(parts, model, config, tx_s, tx_d), mesh,
                 batch, patch, config.train)
