"""Finishing, i.e. the scanner: point-spread blur, MRI bias field and gain, modality noise.

CT is in Hounsfield units with correlated Gaussian noise (`ct_scanner`); MRI
is in arbitrary units with a smooth multiplicative bias field, per-case gain
and Rician noise (`mri_scanner`; the prostate ADC channel has its own,
Gaussian, finish in prostate.py).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage

from tfds_builders.synthetic_organs.canvas import Canvas, uniform


def psf(img: np.ndarray, sigma_vox) -> np.ndarray:
  """Gaussian point-spread blur of `img` (D, H, W); sigma in voxels."""
  return ndimage.gaussian_filter(img, sigma_vox, mode="nearest", truncate=2.5)


def bias_field(cv: Canvas, amp: float) -> np.ndarray:
  """Smooth multiplicative MRI bias: exp of a random quadratic, (D, H, W)."""
  rng = cv.rng
  z, y, x = cv.grid(cv.full())
  n = [z / (float(np.abs(z).max()) + 1e-6), y / (float(np.abs(y).max()) + 1e-6),
       x / (float(np.abs(x).max()) + 1e-6)]
  e = 0.0
  for i in range(3):
    e = e + uniform(rng, -1, 1) * n[i] + uniform(rng, -0.5, 0.5) * n[i] * n[i]
  e = e + uniform(rng, -0.5, 0.5) * n[1] * n[2] + uniform(rng, -0.5, 0.5) * n[0] * n[2]
  e = e + uniform(rng, -0.5, 0.5) * n[0] * n[1]
  # Normalize the log-field so its spread is ~`amp` regardless of the draw.
  e = e - float(np.mean(e))
  return np.exp(e * (amp / (float(np.std(e)) + 1e-6))).astype(np.float32)


def rician(cv: Canvas, img: np.ndarray, sigma: float) -> np.ndarray:
  """Magnitude of the complex signal plus Gaussian noise in both parts."""
  rng = cv.rng
  re = img + sigma * rng.standard_normal(img.shape, dtype=np.float32)
  im = sigma * rng.standard_normal(img.shape, dtype=np.float32)
  return np.sqrt(re * re + im * im)


def mri_scanner(cv: Canvas, gain_range: Sequence[float], sigma_vox, bias_amp: float,
                noise_range: Sequence[float]) -> None:
  """Finishes the MRI channel cv.image[0] (D, H, W): blur, coil bias, gain, Rician noise.

  Args:
    cv: canvas (its rng draws the gain, the bias field, the noise SD, the noise).
    gain_range: (lo, hi) of the per-case gain, arbitrary units.
    sigma_vox: point-spread sigma, voxels (scalar or (3,)).
    bias_amp: spread of the log bias field.
    noise_range: (lo, hi) of the noise SD, as a fraction of the gain.
  """
  rng = cv.rng
  gain = uniform(rng, *gain_range)
  img = psf(cv.image[0], sigma_vox)
  img *= bias_field(cv, bias_amp) * gain
  cv.image[0] = rician(cv, img, gain * uniform(rng, *noise_range))


def ct_scanner(cv: Canvas) -> None:
  """Finishes the CT channel cv.image[0] (D, H, W), HU: blur, correlated noise, HU range."""
  rng = cv.rng
  img = psf(cv.image[0], (0.4, 0.6, 0.6))
  noise = rng.standard_normal(img.shape, dtype=np.float32)
  noise = ndimage.gaussian_filter(noise, (0.0, 0.7, 0.7), truncate=2.5)
  noise *= uniform(rng, 6, 12) / (float(noise.std()) + 1e-6)
  img += noise
  np.clip(img, -1024.0, 3071.0, out=img)
  cv.image[0] = img
