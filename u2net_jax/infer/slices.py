"""Orthogonal-slice overview of one case: image with label and prediction overlays (numpy only).

`overlay_grid(image, label, prediction, num_classes)` gives one RGB picture
(H, W, 3) uint8 for TensorBoard (`add_image(..., dataformats="HWC")`):
three slices through one voxel — axial (H × W at z), coronal (D × W at y),
sagittal (D × H at x) — side by side, the label's classes coloured over the
image in the top row and the prediction's in the bottom row. Slices are on
the voxel grid (no spacing correction), row 0 = index 0.
"""

from __future__ import annotations

import numpy as np

# Class colours (RGB), class 1 first; classes past the list reuse it.
PALETTE = np.array([
    (230, 25, 75), (60, 180, 75), (0, 130, 200), (255, 225, 25), (245, 130, 48),
    (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212),
], np.float32)
GAP = 2  # black pixels between panels (after zooming)


def class_colour(k: int) -> np.ndarray:
  """RGB float32 (3,) of foreground class `k` ≥ 1."""
  return PALETTE[(k - 1) % len(PALETTE)]


def slice_centre(label: np.ndarray) -> tuple[int, int, int]:
  """(z, y, x) voxel: the rounded centroid of the foreground (label > 0), else the centre."""
  fg = np.argwhere(np.asarray(label) > 0)
  if not len(fg):
    return tuple(int(s) // 2 for s in label.shape)
  return tuple(int(v) for v in np.rint(fg.mean(axis=0)))


def orthogonal_slices(volume: np.ndarray, centre) -> list[np.ndarray]:
  """[axial (H, W), coronal (D, W), sagittal (D, H)] of a (D, H, W) volume through `centre`."""
  z, y, x = centre
  return [volume[z], volume[:, y, :], volume[:, :, x]]


def window(image: np.ndarray) -> np.ndarray:
  """(D, H, W) float32 in [0, 1]: `image` clipped to its 1st–99th percentile, rescaled.

  A constant image gives zeros.
  """
  image = np.asarray(image, np.float32)
  lo, hi = np.percentile(image, [1.0, 99.0])
  if not hi > lo:
    return np.zeros_like(image)
  return np.clip((image - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def _overlay(gray: np.ndarray, classes: np.ndarray, num_classes: int,
             alpha: float) -> np.ndarray:
  """(h, w, 3) float32 0–255: `gray` (h, w) in [0, 1] with classes 1..K-1 blended in."""
  rgb = np.repeat(gray[..., None] * 255.0, 3, axis=-1)
  for k in range(1, num_classes):
    where = classes == k
    rgb[where] = (1.0 - alpha) * rgb[where] + alpha * class_colour(k)
  return rgb


def _row(panels: list[np.ndarray], height: int) -> np.ndarray:
  """Panels (h_i, w_i, 3) padded (black, below) to `height`, side by side with GAP between."""
  parts = []
  for i, p in enumerate(panels):
    if i:
      parts.append(np.zeros((height, GAP, 3), np.float32))
    parts.append(np.pad(p, ((0, height - p.shape[0]), (0, 0), (0, 0))))
  return np.concatenate(parts, axis=1)


def overlay_grid(image: np.ndarray, label: np.ndarray, prediction: np.ndarray,
                 num_classes: int, *, alpha: float = 0.5, min_height: int = 128) -> np.ndarray:
  """(H, W, 3) uint8: the case's three orthogonal slices, label (top) and prediction (bottom).

  Args:
    image: (D, H, W, C) or (D, H, W); the first channel is shown, windowed (`window`).
    label: (D, H, W) class ids; the slices go through its foreground's centroid
      (`slice_centre`), the volume centre when it has none.
    prediction: (D, H, W) class ids on the same grid.
    num_classes: K (background 0 included); ids ≥ K are not coloured.
    alpha: opacity of the class colours.
    min_height: each row is zoomed (nearest neighbour, whole factors) to at least
      this many pixels, so small volumes stay legible.
  """
  image = np.asarray(image)
  vol = image[..., 0] if image.ndim == 4 else image
  label, prediction = np.asarray(label), np.asarray(prediction)
  if not vol.shape == label.shape == prediction.shape:
    raise ValueError(f"image {vol.shape}, label {label.shape} and prediction "
                     f"{prediction.shape} must share (D, H, W)")
  centre = slice_centre(label)
  d, h, _ = vol.shape
  zoom = max(1, -(-min_height // max(d, h)))
  height = max(d, h) * zoom
  gray = orthogonal_slices(window(vol), centre)
  rows = []
  for classes in (label, prediction):
    panels = [_overlay(g, c, num_classes, alpha)
              for g, c in zip(gray, orthogonal_slices(classes, centre))]
    panels = [p.repeat(zoom, axis=0).repeat(zoom, axis=1) for p in panels]
    rows.append(_row(panels, height))
  grid = np.concatenate([rows[0], np.zeros((GAP, rows[0].shape[1], 3), np.float32), rows[1]])
  return np.clip(np.rint(grid), 0, 255).astype(np.uint8)
