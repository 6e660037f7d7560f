"""The official code's learning-rate rule: halve when the training loss stops falling.

`huangmozhilv/u2net_torch`, `u2net_torch_src/train.py` (main loop, "lr decay"):
an epoch is `step_per_epoch` = 300 steps (`config.py`); after each epoch its
mean training loss (over all steps, every domain) joins a queue of the last
`trLoss_win` = 20 epochs; once the queue is full, the moving average `ma` of
the queue is compared with the previous epoch's: if `last_ma - ma < 1e-4`
the learning rate is halved; `last_ma = ma` either way. Training stops at the
end of the first epoch that starts with lr < 1e-8 (the check comes before that
epoch's halving), or after `max_epoch` = 300 epochs (90,000 steps).

`LossPlateau` is that rule as a small state machine: `add` one step's loss,
`end_epoch` at every epoch boundary. Its state is plain floats (`to_dict` /
`from_dict`), saved in the checkpoint's metadata so a resumed run continues
mid-epoch exactly.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass
class LossPlateau:
  """Halve the lr when the windowed mean of epoch losses improves < `min_delta`.

  Attributes:
    epoch_steps: steps per epoch (official 300).
    window: epochs in the moving average (official 20).
    min_delta: the smallest improvement of the moving average that keeps the lr.
    factor: lr multiplier on a plateau (official 0.5).
    min_lr: stop once an epoch starts below this lr (official 1e-8).
    scale: the current lr multiplier (1 at the start).
  """
  epoch_steps: int = 300
  window: int = 20
  min_delta: float = 1e-4
  factor: float = 0.5
  min_lr: float = 1e-8
  scale: float = 1.0
  epoch_sum: float = 0.0
  epoch_count: int = 0
  queue: list = dataclasses.field(default_factory=list)
  last_ma: float | None = None
  stopped: bool = False

  def __post_init__(self):
    if self.epoch_steps < 1 or self.window < 1 or not 0 < self.factor < 1:
      raise ValueError(f"LossPlateau: epoch_steps {self.epoch_steps} and window "
                       f"{self.window} must be ≥ 1 and factor {self.factor} in (0, 1).")
    self._pending = []

  def add(self, loss) -> None:
    """One step's training loss (a float or a device scalar: read at the epoch's end)."""
    self._pending.append(loss)

  def _flush(self) -> None:
    if self._pending:
      values = np.asarray([float(v) for v in self._pending], np.float64)
      self.epoch_sum += float(values.sum())
      self.epoch_count += len(values)
      self._pending = []

  def end_epoch(self, base_lr: float) -> bool:
    """Closes an epoch; updates `scale`; True when training should stop.

    `base_lr`: the lr before the multiplier (train.lr), for the stop rule.
    """
    self._flush()
    epoch_loss = self.epoch_sum / max(self.epoch_count, 1)
    self.epoch_sum, self.epoch_count = 0.0, 0
    self.queue = (self.queue + [epoch_loss])[-self.window:]
    ma = float(np.mean(self.queue))
    if base_lr * self.scale < self.min_lr:
      self.stopped = True
      return True
    if len(self.queue) == self.window:
      if self.last_ma is not None and self.last_ma - ma < self.min_delta:
        self.scale *= self.factor
      self.last_ma = ma
    return False

  def to_dict(self) -> dict:
    self._flush()
    return {k: v for k, v in dataclasses.asdict(self).items()}

  @classmethod
  def from_dict(cls, d: dict) -> "LossPlateau":
    fields = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in d.items() if k in fields})

  @classmethod
  def from_config(cls, tcfg) -> "LossPlateau":
    """From train.plateau_* (their defaults, u2net_jax/config.py, are the official values)."""
    return cls(epoch_steps=tcfg.plateau_epoch_steps, window=tcfg.plateau_window,
               min_delta=tcfg.plateau_min_delta, min_lr=tcfg.plateau_min_lr)
