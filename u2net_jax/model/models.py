"""The 3D U-Net backbone shared by the five conv-unit variants.

Backbone (as in the official 3D U²-Net code), for L levels with features
F_l = F0·2^l:
  input:    per-domain dense 3³ conv (domain channels → F0) → norm → act
  encoder:  level l = two conv units with a residual add; a stride-2
            downsampling unit (F_l → F_{l+1}) between levels
  decoder:  nearest ×2 upsample → conv unit (F_{l+1} → F_l) → concat skip →
            conv unit 3³ (2F_l → F_l) → conv unit 1³ (F_l → F_l)
  heads:    deep-supervision 1³ heads (→ norm → act) at decoder levels 2 and 1,
            upsampled and summed into the per-domain 1³ output conv's logits.
Norms are per-domain affine InstanceNorms, activations LeakyReLU(0.01).
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from u2net_jax import config as config_lib
from u2net_jax.domains import DomainSpec, check_unique
from u2net_jax.errors import ConfigError, InputError
from u2net_jax.model import layers
from u2net_jax.model.layers import DomainParam, DomainSelector, leaky_relu

# Padded classes get this logit, so softmax gives them probability ~0. Finite
# rather than -inf so that nothing downstream can produce inf - inf = NaN;
# exp(-1e9 - max) underflows to exactly 0 in float32 (losses use it too).
MASKED_LOGIT = -1e9


def level_strides(num_levels: int, pool_per_axis: Sequence[int] = ()) -> list:
  """The stride of each downsampling unit (num_levels - 1 of them).

  Isotropic: 2 at every level. `pool_per_axis` (D, H, W) counts: level l
  strides (2 if l < p_a else 1) on axis a, as `num_pool2stride_size` in the
  official `models/model_utils.py`; num_levels must be max(pool_per_axis) + 1.
  """
  if not pool_per_axis:
    return [2] * (num_levels - 1)
  pools = tuple(int(p) for p in pool_per_axis)
  if len(pools) != 3 or min(pools) < 0:
    raise ConfigError(f"model.pool_per_axis must be 3 counts ≥ 0 (D, H, W), got {pools}.")
  if max(pools) + 1 != num_levels:
    raise ConfigError(f"model.pool_per_axis {pools} pools {max(pools)} times, so "
                      f"model.num_levels must be {max(pools) + 1}, got {num_levels}.")
  return [tuple(2 if l < p else 1 for p in pools) for l in range(num_levels - 1)]


def pool_divisor(strides) -> tuple[int, int, int]:
  """(D, H, W) multiples a patch needs for `level_strides`' strides."""
  div = [1, 1, 1]
  for s in strides:
    for a, v in enumerate((s,) * 3 if isinstance(s, int) else s):
      div[a] *= v
  return tuple(div)


class EncoderLevel(nnx.Module):
  """Two conv units with a residual add: act(x + unit2(act(unit1(x))))."""

  def __init__(self, features: int, **unit_kw):
    self.unit1 = layers.ConvUnit(features, features, **unit_kw)
    self.unit2 = layers.ConvUnit(features, features, **unit_kw)

  def __call__(self, x, sel):
    y = leaky_relu(self.unit1(x, sel))
    return leaky_relu(x + self.unit2(y, sel))


class DecoderLevel(nnx.Module):
  """Upsample → unit → concat skip → 3³ unit → 1³ unit."""

  def __init__(self, in_features: int, features: int, *, factor=2, **unit_kw):
    self.factor = factor  # the encoder's stride at this level (int or per axis)
    self.up = layers.ConvUnit(in_features, features, **unit_kw)
    self.unit1 = layers.ConvUnit(2 * features, features, **unit_kw)
    self.unit2 = layers.ConvUnit(features, features, kernel_size=1, **unit_kw)

  def __call__(self, x, skip, sel):
    # The skip is concatenated inside unit1, so that the backward pass does
    # not keep a full-size concatenated copy (`ConvUnit`).
    y = leaky_relu(self.up(layers.upsample_nearest(x, self.factor), sel))
    y = leaky_relu(self.unit1((y, skip.astype(y.dtype)), sel))
    return leaky_relu(self.unit2(y, sel))


class U2Net(nnx.Module):
  """Universal 3D U-Net over named domains.

  Call with `x` (B, D, H, W, C) and a domain:
    - a name (str): C must equal the domain's channel count; returns logits
      (B, D, H, W, K_domain).
    - an int32 index into `domain_names` (may be traced, so one compiled
      program serves every domain): C must equal `max_in_channels` (zero-pad
      missing channels); returns (B, D, H, W, max_num_classes) logits whose
      classes beyond the domain's count are `MASKED_LOGIT`.
  D, H, W must be divisible by 2^(num_levels-1), or with `pool_per_axis`
  (the official `nums_pool_per_axis`, e.g. (2, 5, 5) for prostate: level l
  halves axis a iff l < pool_per_axis[a]; num_levels = max + 1) by
  (2^p_D, 2^p_H, 2^p_W).
  """

  def __init__(self, domains: Sequence[DomainSpec], *, features_root: int = 16,
               num_levels: int = 4, mode: str = "separable", downsample: str = "separable",
               deep_supervision: bool = True, depthwise_impl: str = "auto",
               dense_impl: str = "auto", compute_dtype=jnp.float32,
               pool_per_axis: Sequence[int] = (), remat: bool = False, rngs: nnx.Rngs):
    layers.check_mode(mode, downsample)
    self.remat = bool(remat)
    self.strides = level_strides(num_levels, pool_per_axis)
    self.pool_per_axis = tuple(int(p) for p in pool_per_axis)
    domains = check_unique(domains)
    if num_levels < 1:
      raise ConfigError(f"model.num_levels must be ≥ 1, got {num_levels}.")
    if features_root < 1:
      raise ConfigError(f"model.features_root must be ≥ 1, got {features_root}.")
    self.domains = domains
    self.domain_names = tuple(d.name for d in domains)
    self.mode = mode
    self.num_levels = num_levels
    self.features = tuple(features_root * 2 ** l for l in range(num_levels))
    names = self.domain_names
    spec = {d.name: d for d in domains}
    dtype = jnp.dtype(compute_dtype)
    unit_kw = dict(mode=mode, names=names, downsample=downsample,
                   depthwise_impl=depthwise_impl, dense_impl=dense_impl, dtype=dtype, rngs=rngs)
    f = self.features

    self.in_conv = layers.Conv(lambda n: spec[n].in_channels, f[0], names=names,
                               dtype=dtype, impl=dense_impl, rngs=rngs)
    self.in_norm = layers.InstanceNorm(f[0], names, rngs=rngs)
    self.encoder = nnx.List([EncoderLevel(f[l], **unit_kw) for l in range(num_levels)])
    self.down = nnx.List([layers.ConvUnit(f[l], f[l + 1], stride=self.strides[l], **unit_kw)
                          for l in range(num_levels - 1)])
    self.decoder = nnx.List([DecoderLevel(f[l + 1], f[l], factor=self.strides[l], **unit_kw)
                             for l in range(num_levels - 1)])
    # Deep supervision at decoder levels 1 and 2 (those that exist).
    self.ds_levels = tuple(l for l in (2, 1) if deep_supervision and l < num_levels - 1)
    classes = lambda n: spec[n].num_classes
    self.ds_conv = nnx.Dict({
        str(l): layers.Conv(f[l], classes, kernel_size=1, names=names, use_bias=True,
                            dtype=dtype, rngs=rngs) for l in self.ds_levels})
    self.ds_norm = nnx.Dict({str(l): layers.InstanceNorm(classes, names, rngs=rngs)
                             for l in self.ds_levels})
    self.out_conv = layers.Conv(f[0], classes, kernel_size=1, names=names, use_bias=True,
                                dtype=dtype, rngs=rngs)

  # -- domains -------------------------------------------------------------

  def spec(self, name: str) -> DomainSpec:
    for d in self.domains:
      if d.name == name:
        return d
    raise ConfigError(f"Unknown domain {name!r}; this model knows {list(self.domain_names)}.")

  @property
  def max_in_channels(self) -> int:
    return max(d.in_channels for d in self.domains)

  @property
  def max_num_classes(self) -> int:
    return max(d.num_classes for d in self.domains)

  @property
  def divisor(self) -> tuple[int, int, int]:
    """Spatial sizes (D, H, W) must be multiples of these."""
    return pool_divisor(self.strides)

  def selector(self, domain) -> DomainSelector:
    if isinstance(domain, str):
      self.spec(domain)
    elif isinstance(domain, (int, np.integer)):
      if not 0 <= int(domain) < len(self.domain_names):
        raise ConfigError(f"Domain index {domain} out of range for {list(self.domain_names)}.")
    elif not (hasattr(domain, "dtype") and jnp.issubdtype(domain.dtype, jnp.integer)
              and jnp.ndim(domain) == 0):
      raise ConfigError(f"domain must be a name or an integer index, got {domain!r}.")
    return DomainSelector(self.domain_names, domain)

  def check_input(self, x, domain) -> None:
    if x.ndim != 5:
      raise InputError(f"Input must be (B, D, H, W, C), got shape {tuple(x.shape)}.")
    channels = self.spec(domain).in_channels if isinstance(domain, str) else self.max_in_channels
    if x.shape[-1] != channels:
      what = f"domain {domain!r}" if isinstance(domain, str) else "an indexed domain (padded)"
      raise InputError(f"Input has {x.shape[-1]} channels but {what} expects {channels}.")
    if any(s % d for s, d in zip(x.shape[1:4], self.divisor)):
      div = self.divisor[0] if len(set(self.divisor)) == 1 else self.divisor
      raise InputError(
          f"Spatial size {tuple(x.shape[1:4])} is not divisible by {div} "
          f"(the pooling of num_levels={self.num_levels}, pool_per_axis "
          f"{self.pool_per_axis or 'isotropic'}).")

  # -- forward -------------------------------------------------------------

  def __call__(self, x: jax.Array, domain) -> jax.Array:
    sel = self.selector(domain)
    self.check_input(x, domain)
    y = leaky_relu(self.in_norm(self.in_conv(x, sel), sel))
    skips = []
    for l in range(self.num_levels):
      y = self._level(self.encoder[l], sel, y)
      if l < self.num_levels - 1:
        skips.append(y)
        y = leaky_relu(self.down[l](y, sel))
    ds = None
    for l in range(self.num_levels - 2, -1, -1):
      y = self._level(self.decoder[l], sel, y, skips[l])
      if l in self.ds_levels:
        h = leaky_relu(self.ds_norm[str(l)](self.ds_conv[str(l)](y, sel), sel))
        ds = layers.upsample_nearest(h if ds is None else h + ds, self.strides[l - 1])
    logits = self.out_conv(y, sel)
    if ds is not None:
      logits = logits + ds
    logits = logits.astype(jnp.float32)
    if not sel.by_name:
      logits = jnp.where(self.class_mask(domain), logits, MASKED_LOGIT)
    return logits

  def _level(self, level: nnx.Module, sel: DomainSelector, *xs: jax.Array) -> jax.Array:
    """level(*xs, sel); with `remat`, under nnx.remat (recomputed in the backward pass)."""
    if not self.remat:
      return level(*xs, sel)
    return nnx.remat(lambda mod, *args: mod(*args, sel))(level, *xs)

  def class_mask(self, domain) -> jax.Array:
    """(max_num_classes,) bool: the classes that exist for `domain` (name or index)."""
    counts = jnp.array([d.num_classes for d in self.domains])
    if isinstance(domain, str):
      domain = self.domain_names.index(self.spec(domain).name)
    return jnp.arange(self.max_num_classes) < counts[domain]


def build_model(domains: Sequence[DomainSpec], model_cfg, *, seed: int = 0,
                rngs: nnx.Rngs | None = None) -> U2Net:
  """Builds a U2Net from `config.model` (a `config.ModelConfig`, ConfigDict or mapping)."""
  m = config_lib.model_config(model_cfg)
  return U2Net(
      domains, features_root=m.features_root, num_levels=m.num_levels, mode=m.mode,
      downsample=m.downsample, deep_supervision=m.deep_supervision,
      depthwise_impl=m.depthwise_impl, dense_impl=m.dense_impl,
      compute_dtype=jnp.dtype(m.compute_dtype), pool_per_axis=m.pool_per_axis,
      remat=m.remat, rngs=rngs if rngs is not None else nnx.Rngs(seed))


def abstract_model(domains: Sequence[DomainSpec], model_cfg, *, seed: int = 0) -> U2Net:
  """The model of `build_model` with `jax.ShapeDtypeStruct`s for weights (nothing allocated).

  Under `nnx.eval_shape` every `rngs.params()` call stores its incremented
  counter into a Flax variable, and Flax compares the traced counter's
  `.sharding`: on a tracer that raises an error whose message walks the whole
  trace so far — quadratic in the number of layers (30.5 s for the `msd`
  preset's five-domain model on the AMD EPYC, 1.7 s with the fix). Counters
  kept as NumPy scalars are incremented eagerly and never traced; the keys
  (fold_in of the same counts) and so the shapes are unchanged.
  """
  def build():
    rngs = nnx.Rngs(seed)
    for stream in vars(rngs).values():
      if isinstance(stream, nnx.RngStream):
        stream.count = nnx.RngCount(np.zeros((), np.uint32), tag=stream.tag)
    return build_model(domains, model_cfg, rngs=rngs)
  return nnx.eval_shape(build)


def parse_pools(value) -> tuple[int, ...]:
  """`model.pool_per_axis` as a tuple: () | (p_D, p_H, p_W) | 'p_D,p_H,p_W'."""
  if isinstance(value, str):
    value = [v for v in value.replace("x", ",").split(",") if v.strip()]
  try:
    return tuple(int(v) for v in value)
  except (TypeError, ValueError):
    raise ConfigError(f"model.pool_per_axis must be 3 integers (D, H, W), got {value!r}.") from None


# -- parameter collections -------------------------------------------------

def shared_state(model: U2Net) -> nnx.State:
  """The shared weights (every Param that is not a DomainParam)."""
  return nnx.state(model, layers.SHARED)


def domain_state(model: U2Net, name: str | None = None) -> nnx.State:
  """Per-domain weights: all domains', or only those of domain `name`."""
  if name is None:
    return nnx.state(model, DomainParam)
  model.spec(name)
  return nnx.state(model, nnx.All(DomainParam, lambda path, _: path[-1] == name))


def param_counts(model: U2Net) -> dict:
  """{"mode", "shared": int, "per_domain": {name: int}, "total": int}."""
  shared = sum(int(np.prod(v.shape)) for v in jax.tree.leaves(shared_state(model)))
  per_domain = {}
  for path, leaf in nnx.to_flat_state(domain_state(model)):
    name = path[-1]
    per_domain[name] = per_domain.get(name, 0) + int(np.prod(leaf.shape))
  per_domain = {n: per_domain.get(n, 0) for n in model.domain_names}
  return {"mode": model.mode, "shared": shared, "per_domain": per_domain,
          "total": shared + sum(per_domain.values())}
