"""The official loss-plateau learning-rate rule (u2net_jax/schedules.py)."""

import json

import pytest

from u2net_jax.train import schedules


def _epoch(rule, loss, base_lr=1.0):
  for _ in range(rule.epoch_steps):
    rule.add(loss)
  return rule.end_epoch(base_lr)


def test_halves_only_when_the_windowed_mean_improves_less_than_min_delta():
  # window 3: no decision until three epochs are queued; the first full
  # window only sets last_ma. Epoch losses 1.0, 0.9, 0.8 -> ma 0.9 (set);
  # 0.7 -> ma 0.8 (gain 0.1: keep); 0.8 -> ma 0.7667 (gain 0.033 < 0.05: halve);
  # 0.8 -> ma 0.7667 (gain 0: halve again).
  rule = schedules.LossPlateau(epoch_steps=2, window=3, min_delta=0.05)
  scales = []
  for loss in (1.0, 0.9, 0.8, 0.7, 0.8, 0.8):
    assert not _epoch(rule, loss)
    scales.append(rule.scale)
  assert scales == [1.0, 1.0, 1.0, 1.0, 0.5, 0.25]
  assert rule.last_ma == pytest.approx((0.7 + 0.8 + 0.8) / 3)
  assert rule.queue == pytest.approx([0.7, 0.8, 0.8])


def test_the_epoch_loss_is_the_mean_of_its_steps_and_state_survives_a_resume():
  rule = schedules.LossPlateau(epoch_steps=4, window=2, min_delta=0.0)
  for v in (1.0, 3.0):
    rule.add(v)
  # Saved mid-epoch (as in a checkpoint's JSON metadata) and restored.
  resumed = schedules.LossPlateau.from_dict(json.loads(json.dumps(rule.to_dict())))
  for r in (rule, resumed):
    r.add(2.0)
    r.add(2.0)
    r.end_epoch(1.0)
  assert rule.queue == resumed.queue == [2.0]
  assert rule.to_dict() == resumed.to_dict()


def test_stops_at_the_end_of_the_first_epoch_that_starts_below_min_lr():
  # base lr 4e-8, window 1, nothing improves: epoch 1 only sets last_ma;
  # epochs 2-4 halve (2e-8, 1e-8, 5e-9); epoch 5 starts at 5e-9 < 1e-8: stop.
  rule = schedules.LossPlateau(epoch_steps=1, window=1, min_delta=1.0, min_lr=1e-8)
  stops = [_epoch(rule, 1.0, base_lr=4e-8) for _ in range(5)]
  assert stops == [False, False, False, False, True]
  assert rule.stopped and rule.scale == 1 / 8
  with pytest.raises(ValueError):
    schedules.LossPlateau(factor=1.0)
