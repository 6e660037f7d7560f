"""Tests of u2net_jax.losses against definitions written out in plain Python."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from u2net_jax.train import losses
from u2net_jax.errors import InputError

IGNORE = 255


def _random_case(seed, shape=(2, 1, 2, 3), num_classes=3, ignore=None):
  """Random logits (B, D, H, W, C), labels and softmax probs (numpy)."""
  rng = np.random.default_rng(seed)
  logits = rng.normal(size=shape + (num_classes,)).astype(np.float32) * 2
  labels = rng.integers(0, num_classes, size=shape)
  if ignore is not None:
    labels[rng.random(shape) < 0.3] = ignore
  probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
  return logits, labels, probs


# --- Brute-force Lovász-Softmax, straight from the definitions. ------------


def _jaccard_loss(gt, errors_set):
  """Δ(S) = 1 - |gt ∩ pred| / |gt ∪ pred|, pred = gt with S's voxels wrong."""
  pred = (gt - errors_set) | (errors_set - gt)
  union = gt | pred
  return 0.0 if not union else 1.0 - len(gt & pred) / len(union)


def _lovasz_extension(m, gt):
  """∫_0^1 Δ({i : m_i >= t}) dt, exact as a sum over the distinct levels.

  Δ of the threshold set is piecewise constant in t, so the integral is a sum
  over the intervals between consecutive distinct error values; no sorting
  of voxels (nor tie-breaking) is involved.
  """
  levels = sorted({float(v) for v in m if v > 0}, reverse=True) + [0.0]
  total = 0.0
  for upper, lower in zip(levels[:-1], levels[1:]):
    above = {i for i, v in enumerate(m) if v >= upper}
    total += (upper - lower) * _jaccard_loss(gt, above)
  return total


def _lovasz_brute(probs, labels, classes, per_image, ignore):
  """Reference loss; ignored voxels are simply dropped."""
  num_classes = probs.shape[-1]
  groups = ([(probs[b], labels[b]) for b in range(len(labels))] if per_image
            else [(probs, labels)])
  group_losses = []
  for p, y in groups:
    p = p.reshape(-1, num_classes)
    y = y.reshape(-1)
    if ignore is not None:
      p, y = p[y != ignore], y[y != ignore]
    class_losses = []
    for c in (classes if isinstance(classes, (list, tuple))
              else range(num_classes)):
      gt = {i for i in range(len(y)) if y[i] == c}
      if classes == 'present' and not gt:
        continue
      m = [abs(float(y[i] == c) - float(p[i, c])) for i in range(len(y))]
      class_losses.append(_lovasz_extension(m, gt))
    group_losses.append(np.mean(class_losses) if class_losses else 0.0)
  return float(np.mean(group_losses))


@pytest.mark.parametrize(
    'classes,per_image,ignore',
    list(itertools.product(['present', 'all', [0, 2]], [False, True],
                           [None, IGNORE, 0])))
def test_lovasz_matches_brute_force(classes, per_image, ignore):
  for seed in range(3):
    _, labels, probs = _random_case(seed, ignore=ignore)
    got = losses.lovasz_softmax(probs, labels, classes=classes,
                                per_image=per_image, ignore=ignore)
    want = _lovasz_brute(probs, labels, classes, per_image, ignore)
    np.testing.assert_allclose(float(got), want, rtol=1e-5, atol=1e-6)


def test_lovasz_with_tied_errors_matches_brute_force():
  # Quantized probabilities create ties; the extension must not depend on
  # how the sort breaks them.
  _, labels, probs = _random_case(7)
  probs = np.round(probs * 4) / 4
  got = losses.lovasz_softmax(probs, labels, classes='all')
  want = _lovasz_brute(probs, labels, 'all', False, None)
  np.testing.assert_allclose(float(got), want, rtol=1e-5, atol=1e-6)


def test_lovasz_hard_prediction_is_one_minus_iou():
  rng = np.random.default_rng(3)
  labels = rng.integers(0, 3, size=(2, 1, 2, 3))
  pred = np.where(rng.random(labels.shape) < 0.3,
                  rng.integers(0, 3, size=labels.shape), labels)
  probs = np.eye(3, dtype=np.float32)[pred]
  ious = [np.sum((pred == c) & (labels == c)) / np.sum((pred == c)
                                                       | (labels == c))
          for c in range(3)]
  got = losses.lovasz_softmax(probs, labels, classes='all')
  np.testing.assert_allclose(float(got), 1 - np.mean(ious), rtol=1e-6)


def test_lovasz_perfect_prediction_is_zero_and_absent_classes_give_zero():
  labels = np.array([[[[0, 1, 1], [0, 0, 1]]], [[[2, 1, 1], [0, 0, 1]]]])
  probs = np.eye(3, dtype=np.float32)[labels]
  assert float(losses.lovasz_softmax(probs, labels, classes='all')) == 0.0
  assert float(losses.lovasz_softmax(probs, labels, per_image=True)) == 0.0
  # Every voxel ignored: no class present, the loss is 0 and not NaN.
  all_ignored = np.full_like(labels, IGNORE)
  assert float(losses.lovasz_softmax(probs, all_ignored,
                                     ignore=IGNORE)) == 0.0


def test_lovasz_grad_is_finite_and_jit_matches_eager():
  logits, labels, _ = _random_case(0)
  mask = jnp.array([True, True, False])

  def loss_fn(x, m):
    return losses.lovasz_softmax(jax.nn.softmax(x), labels, class_mask=m)

  eager = loss_fn(logits, mask)
  jitted = jax.jit(loss_fn)(logits, mask)  # class_mask traced here
  np.testing.assert_allclose(float(jitted), float(eager), rtol=1e-6)
  grad = jax.grad(loss_fn)(jnp.asarray(logits), mask)
  assert np.all(np.isfinite(grad)) and np.any(grad != 0)


# --- Pixel-wise losses and class masks. -------------------------------------


def test_cross_entropy_and_focal_match_formula():
  logits, labels, probs = _random_case(1)
  p_t = np.take_along_axis(probs, labels[..., None], -1)[..., 0]
  np.testing.assert_allclose(float(losses.cross_entropy(logits, labels)),
                             np.mean(-np.log(p_t)), rtol=1e-5)
  np.testing.assert_allclose(
      float(losses.focal_loss(logits, labels, gamma=2.0)),
      np.mean(-(1 - p_t) ** 2 * np.log(p_t)), rtol=1e-5)
  np.testing.assert_allclose(
      float(losses.focal_loss(logits, labels, gamma=0.0)),
      float(losses.cross_entropy(logits, labels)), rtol=1e-6)


def test_soft_dice_perfect_is_zero_and_hard_is_one_minus_dice():
  labels = np.array([[[[0, 1, 2], [0, 0, 1]]]] * 2)
  onehot = np.eye(3, dtype=np.float32)[labels]
  assert float(losses.soft_dice_loss(onehot, labels)) == pytest.approx(
      0.0, abs=1e-6)
  pred = np.array([[[[0, 1, 1], [0, 2, 1]]]] * 2)
  # Dice per class: bg 2*2/(2+3), class 1 2*2/(3+2), class 2 0/(1+1), the
  # same for the two identical images.
  want = 1 - np.mean([4 / 5, 4 / 5, 0.0])
  got = losses.soft_dice_loss(np.eye(3, dtype=np.float32)[pred], labels)
  assert float(got) == pytest.approx(want, abs=1e-5)


def test_soft_dice_without_background_averages_foreground_classes_only():
  # nnU-Net's do_bg=False: the same hard prediction as above, class 0 left out.
  labels = np.array([[[[0, 1, 2], [0, 0, 1]]]] * 2)
  pred = np.eye(3, dtype=np.float32)[np.array([[[[0, 1, 1], [0, 2, 1]]]] * 2)]
  got = losses.soft_dice_loss(pred, labels, include_background=False)
  assert float(got) == pytest.approx(1 - np.mean([4 / 5, 0.0]), abs=1e-5)
  # Through segmentation_loss, with a padded 4th class masked out.
  mask = np.array([True, True, True, False])
  padded = np.concatenate([np.log(pred + 1e-12), np.full(pred.shape[:-1] + (1,), -1e9)], -1)
  both = losses.segmentation_loss(padded, labels, kind='dice_ce', class_mask=mask,
                                  include_background=False)
  ce = losses.cross_entropy(padded, labels, class_mask=mask)
  assert float(both) - float(ce) == pytest.approx(1 - np.mean([4 / 5, 0.0]), abs=1e-4)


@pytest.mark.parametrize('kind', losses.LOSS_KINDS)
def test_padded_class_with_mask_changes_nothing(kind):
  logits, labels, _ = _random_case(2)
  want = float(losses.segmentation_loss(logits, labels, kind=kind))
  mask = np.array([True, True, True, False])
  # Very negative padding (what the caller does) and, since the losses must
  # not rely on it, arbitrary padding logits.
  for pad in (-1e9, 0.0, 5.0):
    padded = np.concatenate(
        [logits, np.full(logits.shape[:-1] + (1,), pad, np.float32)], -1)
    got = losses.segmentation_loss(padded, labels, kind=kind,
                                   class_mask=mask)
    np.testing.assert_allclose(float(got), want, rtol=1e-5, atol=1e-6,
                               err_msg=f'pad={pad}')


def test_lovasz_all_classes_excludes_masked_class():
  # With classes='all' an unmasked padding class would count as a class.
  logits, labels, _ = _random_case(4)
  want = losses.segmentation_loss(logits, labels, kind='lovasz',
                                  classes='all')
  padded = np.concatenate(
      [logits, np.full(logits.shape[:-1] + (1,), -1e9, np.float32)], -1)
  got = losses.segmentation_loss(padded, labels, kind='lovasz',
                                 classes='all',
                                 class_mask=np.array([1, 1, 1, 0], bool))
  np.testing.assert_allclose(float(got), float(want), rtol=1e-5)


def test_lovasz_focal_is_sum_of_parts_and_bfloat16_gives_float32():
  logits, labels, probs = _random_case(5)
  got = losses.segmentation_loss(logits, labels)
  want = (losses.lovasz_softmax(probs, labels)
          + losses.focal_loss(logits, labels))
  np.testing.assert_allclose(float(got), float(want), rtol=1e-5)
  for kind in losses.LOSS_KINDS:
    out = losses.segmentation_loss(jnp.asarray(logits, jnp.bfloat16), labels,
                                   kind=kind)
    assert out.dtype == jnp.float32 and out.shape == ()


def test_bad_inputs_raise_input_error():
  logits, labels, probs = _random_case(0)
  with pytest.raises(InputError, match='does not match'):
    losses.cross_entropy(logits, labels[:, :, :1])
  with pytest.raises(InputError, match='ndim'):
    losses.soft_dice_loss(probs[0], labels[0])
  with pytest.raises(InputError, match='class_mask'):
    losses.focal_loss(logits, labels, class_mask=np.ones(2, bool))
  with pytest.raises(InputError, match="'nope'.*lovasz_focal"):
    losses.segmentation_loss(logits, labels, kind='nope')
  with pytest.raises(InputError, match='gamma'):
    losses.segmentation_loss(logits, labels, kind='ce', gamma=1.0)
  with pytest.raises(InputError, match='classes'):
    losses.lovasz_softmax(probs, labels, classes='some')
  with pytest.raises(InputError, match=r'\[0, 3\)'):
    losses.lovasz_softmax(probs, labels, classes=[0, 3])
  with pytest.raises(ValueError):  # InputError is a ValueError
    losses.cross_entropy(logits, labels.astype(np.float32))


# --- The official code's choices (FIDELITY.md). -----------------------------


def test_detached_focal_gradient_is_cross_entropy_gradient_times_the_modulator():
  # One voxel, two classes, label 0, logits (a, 0): p = sigmoid(a). With the
  # modulator (1-p)^2 detached, d/da [-(1-p)^2 log p] = -(1-p)^2 (1-p):
  # the CE gradient -(1-p) reweighted. Not detached, the product rule adds
  # 2 (1-p) p (1-p) log p (which has the other sign for p < 1).
  a = 0.3
  p = 1 / (1 + np.exp(-a))
  labels = np.zeros((1, 1, 1, 1), np.int32)

  def grad(detach):
    f = lambda x: losses.focal_loss(jnp.stack([x, 0.0]).reshape(1, 1, 1, 1, 2), labels,
                                    gamma=2.0, detach_modulator=detach)
    return float(jax.grad(f)(jnp.float32(a)))

  np.testing.assert_allclose(grad(True), -(1 - p) ** 3, rtol=1e-5)
  np.testing.assert_allclose(grad(False), -(1 - p) ** 3 + 2 * (1 - p) ** 2 * p * np.log(p),
                             rtol=1e-5)
  # The value is the same either way.
  x = np.array([a, 0.0], np.float32).reshape(1, 1, 1, 1, 2)
  assert float(losses.focal_loss(x, labels, detach_modulator=True)) == pytest.approx(
      float(losses.focal_loss(x, labels)))


def test_lovasz_over_all_classes_charges_an_absent_class_its_largest_probability():
  # Two voxels, both background; class 1 absent. Class 1's Jaccard loss for
  # errors sorted (0.4, 0.1): the first wrong voxel makes the union non-empty
  # with no intersection (Δ 0 -> 1), the second adds nothing (Δ stays 1):
  # 0.4·1 + 0.1·0 = 0.4. Background: errors (0.4, 0.1), |gt| 2: increments
  # 1/2, 1/2 -> 0.25. 'all' averages both (0.325); 'present' only background.
  probs = np.array([[0.6, 0.4], [0.9, 0.1]], np.float32).reshape(1, 1, 1, 2, 2)
  labels = np.zeros((1, 1, 1, 2), np.int32)
  assert float(losses.lovasz_softmax(probs, labels, classes="all")) == pytest.approx(0.325)
  assert float(losses.lovasz_softmax(probs, labels, classes="present")) == pytest.approx(0.25)
  logits = np.log(probs)
  kw = {"classes": "all", "detach_modulator": True}
  total = losses.segmentation_loss(logits, labels, kind="lovasz_focal", **kw)
  focal = losses.focal_loss(logits, labels)
  assert float(total) == pytest.approx(0.325 + float(focal), rel=1e-5)


def test_loss_options_come_from_the_train_config_and_are_checked():
  from u2net_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  from u2net_jax import config_utils  # pylint: disable=g-import-not-at-top
  from u2net_jax.errors import ConfigError  # pylint: disable=g-import-not-at-top
  train = lambda **kw: config_lib.parse({"train": kw}).train
  t = train(loss="lovasz_focal", lovasz_classes="all", focal_detach=True)
  assert config_utils.loss_options(t) == {"classes": "all", "detach_modulator": True}
  assert config_utils.loss_options(train(loss="dice_ce")) == {"include_background": True}
  assert config_utils.loss_options(train(loss="dice", dice_background=False)) == {
      "include_background": False}
  with pytest.raises(ConfigError, match="lovasz_classes 'some'"):
    train(loss="lovasz", lovasz_classes="some")
  with pytest.raises(ConfigError, match="train.loss 'hinge'"):
    train(loss="hinge")
