"""Evaluation metrics on 3D label maps (host side, NumPy/SciPy).

Inputs are integer label maps `pred`, `label` of one shape `(D, H, W)`, or
bool masks for the binary functions, and `spacing` = voxel size in mm as
`(z, y, x)`, i.e. along axes (D, H, W).

Definitions:
  * Surface of a mask: its voxels with at least one of their 6 face
    neighbours outside the mask; outside the volume counts as outside.
  * hd95: 95th-percentile symmetric surface distance in mm, the max of the two
    directed 95th percentiles (`np.percentile`, linear interpolation) of the
    distances from each surface voxel of one mask to the nearest surface voxel
    of the other. This is MONAI's `percentile=95` Hausdorff and DeepMind
    surface-distance's "robust Hausdorff" (which weights by surfel area
    instead of counting voxels).
  * Surface Dice at tolerance t (Nikolov et al. 2021), with voxel counts:
    (#pred-surface voxels within t of the label surface + #label-surface
    voxels within t of the pred surface) / (#pred surface + #label surface).
    "Within" is inclusive (distance <= t).

Empty masks (per class for the per-class functions):

  | metric       | both empty | exactly one empty                        |
  |--------------|------------|------------------------------------------|
  | dice         | 1.0        | 0.0                                      |
  | hd95         | 0.0 mm     | volume diagonal, sqrt(sum((n_i s_i)^2))  |
  | surface dice | 1.0        | 0.0                                      |

The hd95 value for one empty mask is the worst finite value rather than inf
or NaN, so per-case results stay averageable and JSON stays valid.
"""

import numpy as np
from scipy import ndimage

from u2net_jax.errors import InputError

# 6-connectivity: face neighbours only.
_FACE_NEIGHBOURS = ndimage.generate_binary_structure(3, 1)


def _check_pair(pred, label, fn):
  """Returns both as arrays after checking they are 3D of one shape."""
  pred = np.asarray(pred)
  label = np.asarray(label)
  for name, arr in (('pred', pred), ('label', label)):
    if arr.ndim != 3:
      raise InputError(
          f'{fn}: {name} must be a 3D (D, H, W) array, got shape '
          f'{arr.shape}.')
  if pred.shape != label.shape:
    raise InputError(
        f'{fn}: pred shape {pred.shape} does not match label shape '
        f'{label.shape}.')
  return pred, label


def _check_spacing(spacing, fn):
  """Returns spacing as float64 (3,) after checking it is finite, > 0."""
  try:
    values = np.asarray(spacing, dtype=np.float64)
  except (TypeError, ValueError):
    raise InputError(
        f'{fn}: spacing must be 3 numbers (z, y, x) in mm, got '
        f'{spacing!r}.') from None
  if values.shape != (3,):
    raise InputError(
        f'{fn}: spacing must have length 3 (z, y, x) in mm, got {spacing!r}.')
  if not np.all(np.isfinite(values)) or np.any(values <= 0):
    raise InputError(
        f'{fn}: spacing must be finite and positive, got {spacing!r}.')
  return values


def _check_num_classes(num_classes, fn):
  if (isinstance(num_classes, bool)
      or not isinstance(num_classes, (int, np.integer)) or num_classes < 2):
    raise InputError(
        f'{fn}: num_classes must be an integer >= 2 (background + at least '
        f'one class), got {num_classes!r}.')
  return int(num_classes)


def _check_label_map(arr, num_classes, name, fn):
  """Checks an integer label map has values in [0, num_classes)."""
  if arr.dtype == bool:
    return arr.astype(np.int64)
  if not np.issubdtype(arr.dtype, np.integer):
    raise InputError(
        f'{fn}: {name} must be an integer label map, got dtype {arr.dtype}.')
  if arr.size:
    low, high = arr.min(), arr.max()
    if low < 0 or high >= num_classes:
      raise InputError(
          f'{fn}: {name} values must be in [0, {num_classes}), found range '
          f'[{low}, {high}].')
  return arr


def _check_binary(arr, name, fn):
  """Returns a bool mask from a bool array or an integer 0/1 array."""
  if arr.dtype == bool:
    return arr
  if np.issubdtype(arr.dtype, np.integer) and np.all((arr == 0) | (arr == 1)):
    return arr.astype(bool)
  raise InputError(
      f'{fn}: {name} must be a binary mask (bool, or integers 0/1), got dtype '
      f'{arr.dtype}; for a multi-class label map pass num_classes or use the '
      f'*_per_class function.')


def _check_tolerance(tolerance_mm, fn):
  try:
    tolerance = float(tolerance_mm)
  except (TypeError, ValueError):
    raise InputError(
        f'{fn}: tolerance_mm must be a number, got {tolerance_mm!r}.') from None
  if not tolerance >= 0 or not np.isfinite(tolerance):
    raise InputError(
        f'{fn}: tolerance_mm must be finite and >= 0, got {tolerance_mm!r}.')
  return tolerance


def _diagonal_mm(shape, spacing):
  return float(np.sqrt(np.sum((np.asarray(shape) * spacing) ** 2)))


def _surface(mask):
  # border_value=0 erodes voxels on the volume border: outside is outside.
  eroded = ndimage.binary_erosion(mask, structure=_FACE_NEIGHBOURS,
                                  border_value=0)
  return mask & ~eroded


def _bounding_box(mask_a, mask_b):
  """Slices of the bounding box of the union of two non-empty masks.

  Cropping to it is exact: a face neighbour outside the box is outside both
  masks, as is the volume border, so surfaces are unchanged; and the EDT is
  a true Euclidean distance, so distances between voxels in the box are too.
  """
  union = mask_a | mask_b
  slices = []
  for axis in range(union.ndim):
    other = tuple(a for a in range(union.ndim) if a != axis)
    hits = np.flatnonzero(np.any(union, axis=other))
    slices.append(slice(hits[0], hits[-1] + 1))
  return tuple(slices)


def _surface_distances(pred, label, spacing):
  """Directed surface distances in mm for two non-empty bool masks.

  Returns:
    (d_pred, d_label): for each pred-surface voxel, the distance to the
    nearest label-surface voxel, and vice versa; 1D float64 arrays.
  """
  box = _bounding_box(pred, label)
  surface_pred = _surface(pred[box])
  surface_label = _surface(label[box])
  # The EDT gives every nonzero voxel its distance to the nearest zero, so
  # feeding the complement of a surface measures distance to that surface.
  to_label = ndimage.distance_transform_edt(~surface_label, sampling=spacing)
  to_pred = ndimage.distance_transform_edt(~surface_pred, sampling=spacing)
  return to_label[surface_pred], to_pred[surface_label]


def _hd95_binary(pred, label, spacing):
  has_pred, has_label = pred.any(), label.any()
  if not has_pred and not has_label:
    return 0.0
  if not has_pred or not has_label:
    return _diagonal_mm(pred.shape, spacing)
  d_pred, d_label = _surface_distances(pred, label, spacing)
  return float(max(np.percentile(d_pred, 95), np.percentile(d_label, 95)))


def _surface_dice_binary(pred, label, spacing, tolerance):
  has_pred, has_label = pred.any(), label.any()
  if not has_pred and not has_label:
    return 1.0
  if not has_pred or not has_label:
    return 0.0
  d_pred, d_label = _surface_distances(pred, label, spacing)
  within = np.count_nonzero(d_pred <= tolerance) + np.count_nonzero(
      d_label <= tolerance)
  return float(within / (d_pred.size + d_label.size))


def dice(pred, label, num_classes):
  """Dice per foreground class.

  Args:
    pred: (D, H, W) integer label map in [0, num_classes).
    label: (D, H, W) integer label map, same shape.
    num_classes: number of classes including background (>= 2).

  Returns:
    float64 (num_classes - 1,): Dice of classes 1..K-1 (1.0 where the class
    is absent from both, 0.0 where absent from exactly one).
  """
  pred, label = _check_pair(pred, label, 'dice')
  num_classes = _check_num_classes(num_classes, 'dice')
  pred = _check_label_map(pred, num_classes, 'pred', 'dice')
  label = _check_label_map(label, num_classes, 'label', 'dice')
  # One pass: the confusion matrix gives all intersections and sizes.
  joint = label.astype(np.int64).ravel() * num_classes + pred.ravel()
  confusion = np.bincount(joint, minlength=num_classes ** 2).reshape(
      num_classes, num_classes)
  intersection = np.diag(confusion)[1:].astype(np.float64)
  sizes = (confusion.sum(axis=0) + confusion.sum(axis=1))[1:]
  return np.where(sizes == 0, 1.0,
                  2.0 * intersection / np.maximum(sizes, 1))


def hd95_per_class(pred, label, spacing, num_classes):
  """hd95 in mm per foreground class of two label maps.

  Args:
    pred: (D, H, W) integer label map in [0, num_classes).
    label: (D, H, W) integer label map, same shape.
    spacing: voxel size in mm, (z, y, x).
    num_classes: number of classes including background (>= 2).

  Returns:
    float64 (num_classes - 1,) for classes 1..K-1.
  """
  pred, label = _check_pair(pred, label, 'hd95_per_class')
  spacing = _check_spacing(spacing, 'hd95_per_class')
  num_classes = _check_num_classes(num_classes, 'hd95_per_class')
  pred = _check_label_map(pred, num_classes, 'pred', 'hd95_per_class')
  label = _check_label_map(label, num_classes, 'label', 'hd95_per_class')
  return np.array([_hd95_binary(pred == c, label == c, spacing)
                   for c in range(1, num_classes)], dtype=np.float64)


def hd95(pred, label, spacing, num_classes=None):
  """95th-percentile symmetric surface distance in mm (module docstring).

  Args:
    pred: (D, H, W) bool mask (or 0/1 integers); a label map if num_classes.
    label: same shape and kind as pred.
    spacing: voxel size in mm, (z, y, x).
    num_classes: None for binary masks; otherwise the number of classes of
      the label maps, and the result is `hd95_per_class`.

  Returns:
    float for binary masks, else float64 (num_classes - 1,).
  """
  if num_classes is not None:
    return hd95_per_class(pred, label, spacing, num_classes)
  pred, label = _check_pair(pred, label, 'hd95')
  spacing = _check_spacing(spacing, 'hd95')
  pred = _check_binary(pred, 'pred', 'hd95')
  label = _check_binary(label, 'label', 'hd95')
  return _hd95_binary(pred, label, spacing)


def surface_dice(pred, label, spacing, tolerance_mm):
  """Normalized surface Dice of two binary masks (module docstring).

  Args:
    pred: (D, H, W) bool mask (or 0/1 integers).
    label: (D, H, W) bool mask, same shape.
    spacing: voxel size in mm, (z, y, x).
    tolerance_mm: accepted surface deviation in mm, >= 0 (inclusive).

  Returns:
    float in [0, 1].
  """
  pred, label = _check_pair(pred, label, 'surface_dice')
  spacing = _check_spacing(spacing, 'surface_dice')
  tolerance = _check_tolerance(tolerance_mm, 'surface_dice')
  pred = _check_binary(pred, 'pred', 'surface_dice')
  label = _check_binary(label, 'label', 'surface_dice')
  return _surface_dice_binary(pred, label, spacing, tolerance)


def surface_dice_per_class(pred, label, spacing, tolerance_mm, num_classes):
  """Normalized surface Dice per foreground class of two label maps.

  Args:
    pred: (D, H, W) integer label map in [0, num_classes).
    label: (D, H, W) integer label map, same shape.
    spacing: voxel size in mm, (z, y, x).
    tolerance_mm: accepted surface deviation in mm, >= 0 (inclusive); one
      value for all classes.
    num_classes: number of classes including background (>= 2).

  Returns:
    float64 (num_classes - 1,) for classes 1..K-1.
  """
  fn = 'surface_dice_per_class'
  pred, label = _check_pair(pred, label, fn)
  spacing = _check_spacing(spacing, fn)
  tolerance = _check_tolerance(tolerance_mm, fn)
  num_classes = _check_num_classes(num_classes, fn)
  pred = _check_label_map(pred, num_classes, 'pred', fn)
  label = _check_label_map(label, num_classes, 'label', fn)
  return np.array(
      [_surface_dice_binary(pred == c, label == c, spacing, tolerance)
       for c in range(1, num_classes)], dtype=np.float64)
