"""The model family: shapes, parameter counts, collections and domain isolation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from u2net_jax.model import layers, models
from u2net_jax.domains import DomainSpec
from u2net_jax.errors import ConfigError, InputError

DOMAINS = (
    DomainSpec("heart", ("MRI",), ("background", "atrium")),
    DomainSpec("prostate", ("T2", "ADC"), ("background", "pz", "tz")),
    DomainSpec("brain", ("T1", "T1c", "T2", "FLAIR"), ("bg", "edema", "core", "enh", "x")),
)
MODES = layers.MODES
# Tiny models compile ~8× faster with the grouped-conv depthwise; the fused
# 'shift' path is checked against it in test_depthwise.py and below.
FAST = dict(depthwise_impl="lax")


def expected_counts(mode, f0, levels, domains, downsample="separable"):
  """Parameter counts written from the architecture's description."""
  f = [f0 * 2 ** l for l in range(levels)]
  shared = 0
  dom = 0  # per domain, excluding input/output layers

  def unit(a, b, k=3, stride=1):
    nonlocal shared, dom
    variant = mode
    if stride == 2 and not (mode == "separable" and downsample == "separable"):
      variant = "independent" if mode == "independent" else "shared"
    if variant == "separable":
      dom += 27 * a + 2 * a + 2 * b
      shared += a * b
    elif variant == "independent":
      dom += k ** 3 * a * b + 2 * b
    elif variant == "shared":
      shared += k ** 3 * a * b
      dom += 2 * b
    elif variant == "series_adapter":
      shared += k ** 3 * a * b
      dom += 2 * b + b * b + 2 * b
    elif variant == "parallel_adapter":
      shared += k ** 3 * a * b
      dom += a * b + 2 * b

  for l in range(levels):
    unit(f[l], f[l])
    unit(f[l], f[l])
    if l < levels - 1:
      unit(f[l], f[l + 1], stride=2)
  for l in range(levels - 1):
    unit(f[l + 1], f[l])
    unit(2 * f[l], f[l])
    unit(f[l], f[l], k=1)
  per_domain = {}
  for d in domains:
    k = d.num_classes
    n = dom + 27 * d.in_channels * f0 + 2 * f0 + f0 * k + k
    for l in (2, 1):
      if l < levels - 1:
        n += f[l] * k + k + 2 * k
    per_domain[d.name] = n
  return shared, per_domain


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("levels", [2, 4])
def test_param_counts_match_architecture(mode, levels):
  model = nnx.eval_shape(lambda: models.U2Net(DOMAINS, features_root=4, num_levels=levels,
                                              mode=mode, rngs=nnx.Rngs(0)))
  counts = models.param_counts(model)
  shared, per_domain = expected_counts(mode, 4, levels, DOMAINS)
  assert counts["shared"] == shared
  assert counts["per_domain"] == per_domain
  assert counts["total"] == shared + sum(per_domain.values())
  if mode == "independent":
    assert counts["shared"] == 0


def test_dense_downsample_counts():
  model = nnx.eval_shape(lambda: models.U2Net(DOMAINS[:1], features_root=4, num_levels=3,
                                              downsample="dense", rngs=nnx.Rngs(0)))
  shared, per_domain = expected_counts("separable", 4, 3, DOMAINS[:1], downsample="dense")
  assert models.param_counts(model)["shared"] == shared
  assert models.param_counts(model)["per_domain"] == per_domain


def test_abstract_model_has_the_built_models_weights_without_allocating_them():
  # The fast abstract build (NumPy rng counters) must describe exactly the
  # model `build_model` makes: same paths, shapes, dtypes — and no arrays.
  cfg = {"features_root": 4, "num_levels": 3, "mode": "separable"}
  built = nnx.to_flat_state(nnx.state(models.build_model(DOMAINS, cfg, seed=3)))
  abstract = nnx.to_flat_state(nnx.state(models.abstract_model(DOMAINS, cfg, seed=3)))
  built, abstract = dict(built), dict(abstract)
  assert sorted(built, key=str) == sorted(abstract, key=str)
  for path, var in built.items():
    (a,), (b,) = jax.tree.leaves(abstract[path]), jax.tree.leaves(var)
    assert isinstance(a, jax.ShapeDtypeStruct), path
    assert (a.shape, a.dtype) == (b.shape, b.dtype), path


@pytest.mark.parametrize("mode", MODES)
def test_output_shapes_per_domain(mode):
  model = models.U2Net(DOMAINS, features_root=2, num_levels=3, mode=mode, rngs=nnx.Rngs(0),
                       **FAST)
  for d in DOMAINS:
    x = jax.ShapeDtypeStruct((2, 8, 4, 12, d.in_channels), jnp.float32)
    y = nnx.eval_shape(lambda m, x: m(x, d.name), model, x)
    assert y.shape == (2, 8, 4, 12, d.num_classes)
    assert y.dtype == jnp.float32


def test_forward_is_finite_and_depends_on_domain():
  model = models.U2Net(DOMAINS[:2], features_root=2, num_levels=3, rngs=nnx.Rngs(0), **FAST)
  x = jax.random.normal(jax.random.key(0), (1, 8, 8, 8, 1))
  heart = nnx.jit(lambda m, x: m(x, "heart"))(model, x)
  prostate = nnx.jit(lambda m, x: m(x, "prostate"))(model, jnp.concatenate([x, x], -1))
  assert bool(jnp.all(jnp.isfinite(heart))) and bool(jnp.all(jnp.isfinite(prostate)))
  assert not np.allclose(heart, prostate[..., :2])


def test_index_path_equals_name_path_and_masks_padded_classes():
  model = models.U2Net(DOMAINS, features_root=2, num_levels=3, rngs=nnx.Rngs(1), **FAST)
  key = jax.random.key(0)
  for i, d in enumerate(DOMAINS):
    x = jax.random.normal(key, (1, 8, 8, 8, d.in_channels))
    by_name = nnx.jit(lambda m, x: m(x, d.name))(model, x)
    padded = jnp.pad(x, ((0, 0),) * 4 + ((0, model.max_in_channels - d.in_channels),))
    by_index = jax.jit(lambda m, x, i: m(x, i))(model, padded, jnp.int32(i))
    # Same function; float32 rounding differs (the padded path sums over
    # zero channels in another order) and the instance norms over a 2³
    # bottom level of 2-feature maps amplify it to ~1e-3 of the logits.
    np.testing.assert_allclose(by_index[..., :d.num_classes], by_name, rtol=2e-3, atol=2e-3)
    assert bool(jnp.all(by_index[..., d.num_classes:] == models.MASKED_LOGIT))


def test_collections_are_separate_and_keyed_by_domain_name():
  model = models.U2Net(DOMAINS, features_root=2, num_levels=3, rngs=nnx.Rngs(0))
  shared = nnx.to_flat_state(models.shared_state(model))
  per_domain = nnx.to_flat_state(models.domain_state(model))
  assert shared and per_domain
  assert all(not isinstance(v, layers.DomainParam) for _, v in shared)
  assert all(isinstance(v, layers.DomainParam) for _, v in per_domain)
  assert {p[-1] for p, _ in per_domain} == {d.name for d in DOMAINS}
  heart = nnx.to_flat_state(models.domain_state(model, "heart"))
  assert heart and all(p[-1] == "heart" for p, _ in heart)
  # Same structure for every domain: one entry per per-domain weight.
  assert len(heart) * len(DOMAINS) == len(per_domain)
  n_shared = sum(v.size for _, v in shared)
  assert n_shared == models.param_counts(model)["shared"]


@pytest.mark.parametrize("mode,impl", [(m, "lax") for m in MODES] + [("separable", "shift")])
@pytest.mark.parametrize("by_index", [False, True])
def test_step_on_one_domain_changes_only_shared_and_that_domain(mode, impl, by_index):
  model = models.U2Net(DOMAINS, features_root=2, num_levels=2, mode=mode, rngs=nnx.Rngs(0),
                       depthwise_impl=impl)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  target, idx = "prostate", 1
  x = jax.random.normal(jax.random.key(1), (1, 4, 4, 4, 2))
  if by_index:
    x = jnp.pad(x, ((0, 0),) * 4 + ((0, 2),))

  def loss(p):
    m = nnx.merge(graphdef, p, rest)
    return jnp.mean(jnp.square(m(x, jnp.int32(idx) if by_index else target)[..., :3]))

  grads = jax.jit(jax.grad(loss))(params)
  new = jax.tree.map(lambda p, g: p - 0.1 * g, params, grads)
  changed = set()
  for (path, old), (_, upd) in zip(nnx.to_flat_state(params), nnx.to_flat_state(new)):
    if isinstance(old, layers.DomainParam) and path[-1] != target:
      assert np.array_equal(np.asarray(old[...]), np.asarray(upd[...])), path
    if not np.array_equal(np.asarray(old[...]), np.asarray(upd[...])):
      changed.add(path[-1] if isinstance(old, layers.DomainParam) else "shared")
  assert target in changed
  assert ("shared" in changed) == (mode != "independent")


def test_bfloat16_compute_keeps_float32_weights_and_logits():
  model = models.U2Net(DOMAINS[:1], features_root=2, num_levels=2,
                       compute_dtype=jnp.bfloat16, rngs=nnx.Rngs(0), **FAST)
  y = model(jnp.ones((1, 4, 4, 4, 1)), "heart")
  assert y.dtype == jnp.float32
  leaves = jax.tree.leaves(nnx.state(model, nnx.Param))
  assert all(l.dtype == jnp.float32 for l in leaves)


def test_clear_errors():
  model = models.U2Net(DOMAINS, features_root=2, num_levels=3, rngs=nnx.Rngs(0), **FAST)
  with pytest.raises(ValueError, match="Unknown domain 'liver'"):
    model(jnp.ones((1, 8, 8, 8, 1)), "liver")
  with pytest.raises(ValueError, match="2 channels but domain 'heart' expects 1"):
    model(jnp.ones((1, 8, 8, 8, 2)), "heart")
  with pytest.raises(ValueError, match="not divisible by 4"):
    model(jnp.ones((1, 8, 6, 8, 1)), "heart")
  with pytest.raises(ValueError, match=r"\(B, D, H, W, C\)"):
    model(jnp.ones((8, 8, 8, 1)), "heart")
  with pytest.raises(ValueError, match="out of range"):
    model(jnp.ones((1, 8, 8, 8, 4)), 7)
  with pytest.raises(ValueError, match="model.mode"):
    models.U2Net(DOMAINS, mode="unet", rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="Duplicate domain"):
    models.U2Net(DOMAINS + DOMAINS[:1], rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="Domain name"):
    DomainSpec("Heart!", ("MRI",), ("bg", "fg"))
  with pytest.raises(ValueError, match="at least 2 classes"):
    DomainSpec("heart", ("MRI",), ("bg",))


def _official_strides(pools):
  """models/model_utils.py num_pool2stride_size of the official code, verbatim logic."""
  unit = [1, 2]
  return [[unit[i < pools[0]], unit[i < pools[1]], unit[i < pools[2]]]
          for i in range(max(pools))]


@pytest.mark.parametrize("pools", [(4, 5, 5), (5, 5, 5), (3, 3, 3), (2, 5, 5)])
def test_pool_per_axis_strides_are_the_official_ones(pools):
  # config.py nums_pool_per_axis of heart, liver, hippocampus, prostate.
  strides = models.level_strides(max(pools) + 1, pools)
  assert [list(s) for s in strides] == _official_strides(pools)
  assert models.pool_divisor(strides) == tuple(2 ** p for p in pools)


@pytest.mark.parametrize("mode,downsample", [("independent", "separable"),
                                             ("separable", "dense")])
def test_anisotropic_pooling_model_runs_and_restores_the_input_size(mode, downsample):
  # Prostate-like: one pool along D, two in-plane (official (2, 5, 5) in small).
  model = models.build_model(DOMAINS[:2], dict(mode=mode, downsample=downsample,
                                               features_root=4, num_levels=3,
                                               pool_per_axis="1,2,2", **FAST))
  assert model.divisor == (2, 4, 4)
  x = jnp.ones((1, 2, 8, 12, 2))
  out = model(x, "prostate")
  assert out.shape == (1, 2, 8, 12, 3) and bool(jnp.all(jnp.isfinite(out)))
  with pytest.raises(InputError, match="not divisible by \\(2, 4, 4\\)"):
    model(jnp.ones((1, 2, 8, 10, 2)), "prostate")


def test_pool_per_axis_errors_name_the_fix():
  with pytest.raises(ConfigError, match="num_levels must be 4"):
    models.level_strides(3, (3, 3, 3))
  with pytest.raises(ConfigError, match="3 integers"):
    models.parse_pools("a,b,c")
  with pytest.raises(ConfigError, match="downsample='dense'"):
    models.build_model(DOMAINS[:1], dict(mode="separable", downsample="separable",
                                         num_levels=3, pool_per_axis=(1, 2, 2), **FAST))
