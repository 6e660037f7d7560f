"""Segmentation losses in pure jax.numpy (jit- and grad-friendly).

Layout is channels-last: logits / probabilities `(B, D, H, W, C)` float and
labels `(B, D, H, W)` integer in `[0, C)`. Every loss returns a float32 scalar
and computes in float32 whatever the input dtype: with bfloat16 inputs the
sums over ~10^6 voxels would otherwise lose most of their precision.

`class_mask` (optional, bool `(C,)`, may be traced) marks the valid classes.
It exists because several domains with different class counts share one
compiled program: their outputs are padded to a common `C` and the padding
classes must contribute nothing. The logit-based losses re-mask the logits
themselves (so padding is exact even if the caller forgot to), and every
class average is taken over valid classes only.

No Python control flow depends on traced values; only shapes and the static
options (`classes`, `per_image`, `kind`, ...) are inspected in Python.
"""

import jax
import jax.numpy as jnp
import numpy as np

from u2net_jax import options
from u2net_jax.errors import InputError
from u2net_jax.model import models

LOSS_KINDS = options.LOSS_KINDS

# Logit given to masked-out classes (models.MASKED_LOGIT, the one definition).
_MASKED_LOGIT = models.MASKED_LOGIT

# Keyword arguments each `segmentation_loss` kind forwards to its parts.
_KIND_KWARGS = {
    'lovasz_focal': ('classes', 'per_image', 'gamma', 'detach_modulator'),
    'ce': (),
    'focal': ('gamma', 'detach_modulator'),
    'lovasz': ('classes', 'per_image', 'ignore'),
    'dice': ('smooth', 'include_background'),
    'dice_ce': ('smooth', 'include_background'),
}


def _check_inputs(x, labels, fn, what):
  """Converts to arrays and checks static shapes; returns (x_f32, labels)."""
  x = jnp.asarray(x)
  labels = jnp.asarray(labels)
  if x.ndim != 5:
    raise InputError(
        f'{fn}: {what} must have shape (B, D, H, W, C), got shape '
        f'{tuple(x.shape)} (ndim {x.ndim}).')
  if tuple(labels.shape) != tuple(x.shape[:-1]):
    raise InputError(
        f'{fn}: labels shape {tuple(labels.shape)} does not match {what} '
        f'shape {tuple(x.shape)} without its class axis '
        f'{tuple(x.shape[:-1])}.')
  if not jnp.issubdtype(labels.dtype, jnp.integer):
    raise InputError(
        f'{fn}: labels must be an integer array, got dtype {labels.dtype}.')
  return x.astype(jnp.float32), labels


def _check_class_mask(class_mask, num_classes, fn):
  """Returns `class_mask` as a bool (C,) array, or None."""
  if class_mask is None:
    return None
  class_mask = jnp.asarray(class_mask)
  if tuple(class_mask.shape) != (num_classes,):
    raise InputError(
        f'{fn}: class_mask must have shape ({num_classes},) to match the '
        f'class axis, got shape {tuple(class_mask.shape)}.')
  return class_mask.astype(bool)


def _weighted_mean(values, weights, axis=-1):
  """Mean of `values` weighted by 0/1 `weights`; 0 where all weights are 0."""
  weights = weights.astype(jnp.float32)
  total = jnp.sum(weights, axis=axis)
  return jnp.sum(values * weights, axis=axis) / jnp.maximum(total, 1.0)


def _log_softmax(logits, class_mask):
  """Float32 log-softmax over the last axis with masked classes removed."""
  if class_mask is not None:
    logits = jnp.where(class_mask, logits, _MASKED_LOGIT)
  return jax.nn.log_softmax(logits, axis=-1)


def _label_log_prob(log_probs, labels):
  """log p_t per voxel, (B, D, H, W); labels outside [0, C) give 0."""
  one_hot = jax.nn.one_hot(labels, log_probs.shape[-1], dtype=jnp.float32)
  return jnp.sum(log_probs * one_hot, axis=-1)


def cross_entropy(logits, labels, class_mask=None):
  """Softmax cross-entropy averaged over all voxels.

  Args:
    logits: (B, D, H, W, C) float.
    labels: (B, D, H, W) integer in [0, C).
    class_mask: optional bool (C,); invalid classes are removed from the
      softmax.

  Returns:
    float32 scalar, in nats.
  """
  logits, labels = _check_inputs(logits, labels, 'cross_entropy', 'logits')
  class_mask = _check_class_mask(class_mask, logits.shape[-1], 'cross_entropy')
  log_pt = _label_log_prob(_log_softmax(logits, class_mask), labels)
  return -jnp.mean(log_pt)


def focal_loss(logits, labels, gamma=2.0, class_mask=None, detach_modulator=False):
  """Focal loss (Lin et al. 2017), mean over voxels of -(1-p_t)^gamma log p_t.

  With `detach_modulator` the factor (1-p_t)^gamma is a constant for the
  gradient, which then is the cross-entropy gradient reweighted per voxel:
  what the official 3D U²-Net code computes (`loss/focal_loss.py`:
  `pt = Variable(logpt.data.exp())` takes p_t out of the graph).

  Args:
    logits: (B, D, H, W, C) float.
    labels: (B, D, H, W) integer in [0, C).
    gamma: focusing exponent >= 0; gamma = 0 is cross-entropy.
    class_mask: optional bool (C,); invalid classes are removed from the
      softmax.
    detach_modulator: no gradient through (1-p_t)^gamma (see above).

  Returns:
    float32 scalar.
  """
  logits, labels = _check_inputs(logits, labels, 'focal_loss', 'logits')
  class_mask = _check_class_mask(class_mask, logits.shape[-1], 'focal_loss')
  static_gamma = isinstance(gamma, (int, float, np.integer, np.floating))
  if static_gamma and not gamma >= 0:
    raise InputError(f'focal_loss: gamma must be >= 0, got {gamma}.')
  log_pt = _label_log_prob(_log_softmax(logits, class_mask), labels)
  if static_gamma and gamma == 0:
    # Skip the factor: d/dx x^0 at x = 0 is 0 * inf = NaN in autodiff.
    return -jnp.mean(log_pt)
  # -expm1(log p) is 1 - p without cancellation when p is close to 1.
  one_minus_pt = jnp.maximum(-jnp.expm1(log_pt), 0.0)
  modulator = one_minus_pt ** gamma
  if detach_modulator:
    modulator = jax.lax.stop_gradient(modulator)
  return -jnp.mean(modulator * log_pt)


def soft_dice_loss(probs, labels, smooth=1e-5, class_mask=None,
                   include_background=True):
  """1 - mean over valid classes of the soft Dice, pooled over the batch.

  Dice_c = (2 sum(p_c g_c) + smooth) / (sum(p_c) + sum(g_c) + smooth), sums
  over every voxel of every image. A class absent from both labels and
  prediction has Dice ~1 thanks to `smooth`. Background (class 0) counts as a
  class unless `include_background=False` (nnU-Net's `do_bg=False`).

  Args:
    probs: (B, D, H, W, C) class probabilities (e.g. a softmax).
    labels: (B, D, H, W) integer in [0, C).
    smooth: additive smoothing of numerator and denominator.
    class_mask: optional bool (C,); only valid classes enter the mean.
    include_background: whether class 0 enters the mean.

  Returns:
    float32 scalar in [0, 1]; 0 when no class is valid.
  """
  probs, labels = _check_inputs(probs, labels, 'soft_dice_loss', 'probs')
  num_classes = probs.shape[-1]
  class_mask = _check_class_mask(class_mask, num_classes, 'soft_dice_loss')
  one_hot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
  axes = tuple(range(probs.ndim - 1))
  intersection = jnp.sum(probs * one_hot, axis=axes)
  denominator = jnp.sum(probs, axis=axes) + jnp.sum(one_hot, axis=axes)
  dice = (2.0 * intersection + smooth) / (denominator + smooth)
  weights = (jnp.ones((num_classes,), bool) if class_mask is None
             else class_mask)
  if not include_background:
    weights = weights & (jnp.arange(num_classes) > 0)
  return _weighted_mean(1.0 - dice, weights)


def _lovasz_jaccard_per_class(errors, fg):
  """Lovász extension of the Jaccard loss for each row.

  Args:
    errors: (..., N) float32 errors in [0, 1].
    fg: (..., N) int32 ground-truth indicator of the row's class.

  Returns:
    (...,) float32: sum_i e_(i) (Δ(S_i) - Δ(S_{i-1})) with e_(1) >= e_(2)...
    the errors sorted in decreasing order and S_i the i largest.
  """
  order = jnp.argsort(errors, axis=-1, descending=True)
  errors_sorted = jnp.take_along_axis(errors, order, axis=-1)
  fg_sorted = jnp.take_along_axis(fg, order, axis=-1)
  # Counts in int32: float32 cumsums stop being exact past 2^24 voxels.
  gts = jnp.sum(fg, axis=-1, keepdims=True)
  fg_before = jnp.cumsum(fg_sorted, axis=-1) - fg_sorted
  bg_before = jnp.cumsum(1 - fg_sorted, axis=-1) - (1 - fg_sorted)
  # With S = S_{i-1}: the prediction is gt minus the missed fg in S plus the
  # false-positive bg in S, so |gt ∩ pred| = I and |gt ∪ pred| = U below,
  # and Δ(S) = 1 - I / U (Δ(∅) = 0, also when gt is empty).
  inter = (gts - fg_before).astype(jnp.float32)
  union = (gts + bg_before).astype(jnp.float32)
  # Increment Δ(S_i) - Δ(S_{i-1}) in closed form instead of differencing
  # consecutive Δ values: in float32 that cancels catastrophically once the
  # increments (~1/|gt| and smaller) near the epsilon of Δ (~6e-8); at 10^6
  # voxels the differenced increments, which are the loss's gradient w.r.t.
  # the errors, are off by ~2% typically and up to 100x in the tail.
  #   next voxel fg: I -> I - 1, U unchanged  => increment 1 / U;
  #   next voxel bg: I unchanged, U -> U + 1  => increment I / (U (U + 1)),
  #   except U = 0 (gt and S empty): Δ jumps from 0 to 1.
  safe_union = jnp.maximum(union, 1.0)
  grad_fg = 1.0 / safe_union
  grad_bg = jnp.where(union == 0, 1.0,
                      inter / (safe_union * (safe_union + 1.0)))
  grad = jnp.where(fg_sorted == 1, grad_fg, grad_bg)
  # The increments depend on labels only; gradients flow through the errors.
  return jnp.sum(errors_sorted * jax.lax.stop_gradient(grad), axis=-1)


def _selected_classes(classes, num_classes):
  """Static bool (C,) of the classes to average over."""
  if isinstance(classes, str):
    if classes not in ('present', 'all'):
      raise InputError(
          f"lovasz_softmax: classes must be 'present', 'all' or a list of "
          f'class indices, got {classes!r}.')
    return np.ones((num_classes,), bool)
  try:
    indices = [int(c) for c in classes]
  except (TypeError, ValueError):
    raise InputError(
        f"lovasz_softmax: classes must be 'present', 'all' or a list of class "
        f'indices, got {classes!r}.') from None
  bad = [c for c in indices if not 0 <= c < num_classes]
  if bad or not indices:
    raise InputError(
        f'lovasz_softmax: class indices must be a non-empty list in '
        f'[0, {num_classes}), got {classes!r}.')
  selected = np.zeros((num_classes,), bool)
  selected[indices] = True
  return selected


def lovasz_softmax(probs, labels, classes='present', per_image=False,
                   ignore=None, class_mask=None):
  """Lovász-Softmax loss (Berman, Triki & Blaschko, CVPR 2018).

  For each class c, the errors m_i = |[y_i = c] - p_i,c| are plugged into the
  Lovász extension of the Jaccard loss Δ_c, and the result is averaged over
  classes (then over images if `per_image`).

  Args:
    probs: (B, D, H, W, C) class probabilities (e.g. a softmax).
    labels: (B, D, H, W) integer labels.
    classes: 'present' (average over classes present in the labels of the
      image if `per_image`, else of the batch), 'all', or a list/tuple of
      class indices to average over.
    per_image: compute the loss per image and average, instead of treating
      the batch as one big image.
    ignore: optional label value whose voxels are excluded. They get zero
      error and zero foreground for every class; this is exact, not an
      approximation: sorted in decreasing order they come after every voxel
      with positive error, so the Jaccard increments at those voxels (which
      depend only on the preceding voxels and on |gt|, unchanged) are as if
      the ignored voxels were absent, and their own terms are 0 * increment.
    class_mask: optional bool (C,); invalid classes never enter the average.

  Returns:
    float32 scalar; 0 when no class is selected (e.g. none present).
  """
  probs, labels = _check_inputs(probs, labels, 'lovasz_softmax', 'probs')
  num_classes = probs.shape[-1]
  class_mask = _check_class_mask(class_mask, num_classes, 'lovasz_softmax')
  selected = jnp.asarray(_selected_classes(classes, num_classes))
  if class_mask is not None:
    selected = selected & class_mask

  fg = jax.nn.one_hot(labels, num_classes, dtype=jnp.int32)
  if ignore is not None:
    keep = (labels != ignore)[..., None]
    fg = fg * keep.astype(jnp.int32)
  errors = jnp.abs(fg.astype(jnp.float32) - probs)
  if ignore is not None:
    errors = jnp.where(keep, errors, 0.0)

  # Rows: one group (the batch, or each image) per class, voxels last.
  groups = probs.shape[0] if per_image else 1
  errors = jnp.swapaxes(errors.reshape(groups, -1, num_classes), 1, 2)
  fg = jnp.swapaxes(fg.reshape(groups, -1, num_classes), 1, 2)
  per_class = _lovasz_jaccard_per_class(errors, fg)  # (groups, C)

  weights = jnp.broadcast_to(selected, per_class.shape)
  if isinstance(classes, str) and classes == 'present':
    weights = weights & (jnp.sum(fg, axis=-1) > 0)
  return jnp.mean(_weighted_mean(per_class, weights))


def segmentation_loss(logits, labels, kind='lovasz_focal', class_mask=None,
                      **kw):
  """Training loss from logits, selected by name.

  Kinds (terms summed with weight 1 each):
    'lovasz_focal': Lovász-Softmax on the softmax + focal (official default);
      kw: classes, per_image, gamma, detach_modulator.
    'ce': cross-entropy.
    'focal': focal; kw: gamma, detach_modulator.
    'lovasz': Lovász-Softmax on the softmax; kw: classes, per_image, ignore.
    'dice': soft Dice on the softmax; kw: smooth, include_background.
    'dice_ce': soft Dice on the softmax + cross-entropy; kw: smooth,
      include_background.

  Args:
    logits: (B, D, H, W, C) float.
    labels: (B, D, H, W) integer in [0, C).
    kind: one of LOSS_KINDS.
    class_mask: optional bool (C,); invalid classes are removed from the
      softmax and from every class average.
    **kw: options of the component losses, see above.

  Returns:
    float32 scalar.
  """
  if not isinstance(kind, str) or kind not in LOSS_KINDS:
    raise InputError(
        f'segmentation_loss: unknown loss kind {kind!r}; valid kinds are '
        f'{", ".join(LOSS_KINDS)}.')
  unknown = sorted(set(kw) - set(_KIND_KWARGS[kind]))
  if unknown:
    raise InputError(
        f'segmentation_loss: option(s) {unknown} not accepted by kind '
        f'{kind!r}; it accepts {list(_KIND_KWARGS[kind]) or "none"}.')
  logits, labels = _check_inputs(logits, labels, 'segmentation_loss',
                                 'logits')
  class_mask = _check_class_mask(class_mask, logits.shape[-1],
                                 'segmentation_loss')

  def probs():
    return jnp.exp(_log_softmax(logits, class_mask))

  def pick(*names):
    return {k: v for k, v in kw.items() if k in names}

  if kind == 'ce':
    return cross_entropy(logits, labels, class_mask=class_mask)
  if kind == 'focal':
    return focal_loss(logits, labels, class_mask=class_mask, **kw)
  if kind == 'dice':
    return soft_dice_loss(probs(), labels, class_mask=class_mask, **kw)
  if kind == 'dice_ce':
    return (soft_dice_loss(probs(), labels, class_mask=class_mask, **kw)
            + cross_entropy(logits, labels, class_mask=class_mask))
  if kind == 'lovasz':
    return lovasz_softmax(probs(), labels, class_mask=class_mask, **kw)
  # 'lovasz_focal'
  return (lovasz_softmax(probs(), labels, class_mask=class_mask,
                         **pick('classes', 'per_image'))
          + focal_loss(logits, labels, class_mask=class_mask,
                       **pick('gamma', 'detach_modulator')))
