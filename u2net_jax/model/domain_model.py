"""One domain's slice of the universal model: its weights and a pure apply function.

The slice is a U2Net built with that domain alone: its parameters are the
shared weights plus that domain's own (no other domain's), flattened to a dict
`{"path/to/param/leaf": array}`. `make_apply` returns
`apply(weights, x) -> probabilities`, a pure function of that dict that both
in-process prediction and `jax.export` use, so the two compute the same program.

Shapes: x (B, P0, P1, P2, C) float32, channels-last; output softmax
probabilities (B, P0, P1, P2, K) float32.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import numpy as np
from flax import nnx

from u2net_jax import config as config_lib
from u2net_jax.domains import DomainSpec
from u2net_jax.model import dense, depthwise, layers, models


def _key(path) -> str:
  return "/".join(str(p) for p in path)


def _single_model(spec: DomainSpec, model_cfg, impls: dict | None = None) -> models.U2Net:
  cfg = dataclasses.replace(config_lib.model_config(model_cfg), **(impls or {}))
  # Shapes only: the values come from the checkpoint.
  return models.abstract_model([spec], cfg)


def weights_of(params: dict, spec: DomainSpec, model_cfg) -> dict[str, np.ndarray]:
  """Shared + `spec`'s weights of a universal model, as the slice's flat dict.

  Args:
    params: {"shared": State, "domains": {name: State}} (train.split_model).
    spec: the domain.
    model_cfg: `config.model`.
  Returns:
    {key: float32 host array}, keys as `make_apply` expects.
  """
  _, state = nnx.split(_single_model(spec, model_cfg))
  shared = dict(nnx.to_flat_state(params["shared"]))
  own = dict(nnx.to_flat_state(params["domains"][spec.name]))
  out = {}
  for path, var in nnx.to_flat_state(state):
    src = own if isinstance(var, layers.DomainParam) else shared
    value = src[path]
    value = value[...] if isinstance(value, nnx.Variable) else value
    if isinstance(value, jax.Array) and not value.is_fully_addressable:
      raise ValueError("weights_of needs fully addressable (single-process) params")
    out[_key(path)] = np.asarray(value)
  return out


def make_apply(spec: DomainSpec, model_cfg, *, platform: str | None = None) -> Callable:
  """apply(weights, x) -> (B, P0, P1, P2, K) softmax probabilities.

  `platform` ('cpu', 'cuda', 'tpu', None = the default backend) picks the
  depthwise- and dense-conv implementations the config's 'auto' means there.
  """
  get = model_cfg.get if hasattr(model_cfg, "get") else (lambda k, d=None: d)
  impls = {"depthwise_impl": get("depthwise_impl", "auto"),
           "dense_impl": get("dense_impl", "auto")}
  if platform is not None:
    backend = "cpu" if platform == "cpu" else "gpu"
    impls = {"depthwise_impl": depthwise.resolve_impl(impls["depthwise_impl"], backend),
             "dense_impl": dense.resolve_impl(impls["dense_impl"], backend)}
  graphdef, state = nnx.split(_single_model(spec, model_cfg, impls))
  flat = list(nnx.to_flat_state(state))

  def apply(weights, x):
    leaves = [(path, var.replace(weights[_key(path)])) for path, var in flat]
    model = nnx.merge(graphdef, nnx.from_flat_state(leaves))
    return jax.nn.softmax(model(x, spec.name), axis=-1)

  return apply


def window_spec(spec: DomainSpec, patch, batch="b") -> jax.ShapeDtypeStruct:
  """(B, P0, P1, P2, C) float32 with a symbolic batch dimension named `batch`."""
  (b,) = jax.export.symbolic_shape(batch)
  return jax.ShapeDtypeStruct((b,) + tuple(int(p) for p in patch) + (spec.in_channels,),
                              np.float32)
