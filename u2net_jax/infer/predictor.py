"""`Predictor`: a domain's preprocessing plan plus a window function.

Where the window function comes from — a workdir's checkpoint
(`model_source.from_workdir`, `from_params`) or an export (`exported.load`);
`model_source.open_source` tells which a path holds — does not matter to the
rest of inference. This module imports neither JAX nor Flax.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from u2net_jax.data.plans import DomainPlan
from u2net_jax.infer import volume


@dataclasses.dataclass
class Predictor:
  """A domain's preprocessing plan and window predictor.

  Attributes:
    plan: the domain's `DomainPlan`.
    fn: (B, P0, P1, P2, C) float32 windows -> (B, P0, P1, P2, K) probabilities.
    overlap, window_batch, mirror, blend: sliding-window settings (config.eval).
    source_patch: the domain's source patch (D, H, W) when the model was trained
      on source patches resized to `plan.patch_size` (`data.source_patch`, the
      official resize, `rescale`); None: windows on the preprocessed grid.
    decision: stored largest-component decision {class: {"apply": bool, ...}},
      or None if not known yet.
    step: checkpoint step the weights come from.
    source: the workdir or export folder.
  """
  plan: DomainPlan
  fn: Callable[[np.ndarray], np.ndarray]
  overlap: float = 0.5
  window_batch: int = 2
  mirror: bool = False
  blend: str = "gaussian"
  source_patch: tuple | None = None
  decision: dict | None = None
  step: int = 0
  source: str = ""

  def __call__(self, windows: np.ndarray) -> np.ndarray:
    return self.fn(windows)

  def predict_volume(self, image: np.ndarray, *, keep_probabilities: bool = False,
                     progress=None, stats: dict | None = None):
    """(labels uint8 (D, H, W), float16 probabilities or None) of a preprocessed volume.

    With a `source_patch`, through the official resize (`volume.predict_labels`);
    the outputs are on the volume's grid either way.
    """
    return volume.predict_labels(
        image, self.fn, self.plan.patch_size, self.plan.num_classes,
        source_patch=self.source_patch,
        keep_probabilities=keep_probabilities, overlap=self.overlap,
        batch_size=self.window_batch, mirror=self.mirror, blend=self.blend, progress=progress,
        stats=stats)
