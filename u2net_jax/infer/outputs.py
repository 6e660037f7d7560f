"""Writing predictions as NIfTI on the input's grid, atomically.

Each file is written to a temporary name in its folder and renamed into place,
so an interrupted run never leaves a half-written output.

Probability maps are 4D (i, j, k, class) uint8 files with scl_slope 1/255:
NIfTI readers return floats in [0, 1] (within 1/510), at a quarter of
float32's size and memory.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np

from u2net_jax import io
from u2net_jax.data import nifti


def save_label(path: str, label: np.ndarray, meta: nifti.NiftiMeta) -> None:
  """(D, H, W) uint8 labels with `meta`'s affine, header geometry and shape."""
  with io.atomic_path(path) as tmp:
    nifti.save_label(tmp, label, meta)


def quantize(probabilities: np.ndarray, inplace: bool = False) -> np.ndarray:
  """Float probabilities in [0, 1] -> uint8 (value = round(p · 255)).

  `inplace`: scale a float32 input in place (no float temporaries).
  """
  p = probabilities if inplace else np.array(probabilities, np.float32)
  p *= 255
  np.rint(p, out=p)
  np.clip(p, 0, 255, out=p)
  return p.astype(np.uint8)


def save_probabilities(path: str, probs_u8: np.ndarray, meta: nifti.NiftiMeta) -> None:
  """(D, H, W, K) uint8 quantized probabilities as a 4D NIfTI on `meta`'s grid."""
  if probs_u8.dtype != np.uint8 or probs_u8.ndim != 4 or probs_u8.shape[:3] != tuple(meta.shape):
    raise ValueError(f"probabilities must be uint8 {tuple(meta.shape)} + (K,), got "
                     f"{probs_u8.dtype} {probs_u8.shape}")
  header = meta.header.copy()
  klass = nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image
  img = klass(nifti.to_nifti_order(probs_u8), meta.affine, header=header)
  img.set_data_dtype(np.uint8)
  img.header.set_slope_inter(1.0 / 255.0, 0.0)
  img.header["cal_min"] = 0
  img.header["cal_max"] = 1
  with io.atomic_path(path) as tmp:
    nib.save(img, tmp)
