"""TensorBoard you would want to look at: per-domain Dice curves and one picture per domain.

The event files are read without TensorFlow: TFRecord framing, tensorboardX's Event proto.
"""

import io
import json
import os
import struct

import numpy as np
import pytest
from PIL import Image
from tensorboardX.proto import event_pb2

import smoke_workdir
from u2net_jax import config as config_lib
from u2net_jax import logging_utils
from u2net_jax.domains import DomainSpec
from u2net_jax.infer import evaluate, slices
from u2net_jax.train import evaluation

GAP = slices.GAP


def read_events(folder: str) -> list:
  """Every Event of the `events.out.tfevents.*` files in `folder` (TFRecord framed)."""
  events = []
  for name in sorted(os.listdir(folder)):
    if "tfevents" not in name:
      continue
    with open(os.path.join(folder, name), "rb") as f:
      data = f.read()
    pos = 0
    while pos + 12 <= len(data):
      # uint64 length, uint32 CRC of it, the record, uint32 CRC of the record.
      (n,) = struct.unpack("<Q", data[pos:pos + 8])
      event = event_pb2.Event()
      event.ParseFromString(data[pos + 12:pos + 12 + n])
      events.append(event)
      pos += 12 + n + 4
  return events


def tb_values(folder: str) -> dict:
  """{tag: [(step, Summary.Value)]} of the folder's events."""
  out = {}
  for e in read_events(folder):
    for v in e.summary.value:
      out.setdefault(v.tag, []).append((e.step, v))
  return out


def png(value) -> np.ndarray:
  """(H, W, 3) uint8 of an image summary value."""
  return np.asarray(Image.open(io.BytesIO(value.image.encoded_image_string)).convert("RGB"))


# -- the picture: pure numpy ---------------------------------------------------------------


def test_window_maps_the_1st_to_99th_percentile_to_0_1():
  w = slices.window(np.arange(1000, dtype=np.float32).reshape(10, 10, 10))
  assert w.dtype == np.float32 and w.min() == 0.0 and w.max() == 1.0
  assert (w.ravel()[:10] == 0).all() and (w.ravel()[-10:] == 1).all()
  assert (np.diff(w.ravel()) >= 0).all()
  assert (slices.window(np.full((2, 2, 2), 3.0)) == 0).all()  # constant: no division by 0


def test_slices_go_through_the_foreground_centroid_or_the_volume_centre():
  label = np.zeros((4, 6, 8), np.uint8)
  assert slices.slice_centre(label) == (2, 3, 4)
  label[1, 2, 3] = label[1, 2, 5] = 2
  assert slices.slice_centre(label) == (1, 2, 4)
  vol = np.arange(4 * 6 * 8).reshape(4, 6, 8)
  ax, cor, sag = slices.orthogonal_slices(vol, (1, 2, 4))
  assert ax.shape == (6, 8) and cor.shape == (4, 8) and sag.shape == (4, 6)
  assert ax[2, 4] == cor[1, 4] == sag[1, 2] == vol[1, 2, 4]


def test_overlay_grid_layout_and_class_colours():
  d, h, w = 4, 6, 8
  image = np.zeros((d, h, w, 2), np.float32)  # constant: black after windowing
  label = np.zeros((d, h, w), np.uint8)
  pred = np.zeros((d, h, w), np.uint8)
  label[1, 2, 3] = 2
  pred[1, 2, 3] = 1
  pred[3, 5, 7] = 1  # off the three slices through (1, 2, 3): not shown
  grid = slices.overlay_grid(image, label, pred, 3, min_height=0)
  height = max(d, h)
  assert grid.dtype == np.uint8
  assert grid.shape == (2 * height + GAP, 2 * w + h + 2 * GAP, 3)
  c2 = np.rint(0.5 * slices.class_colour(2)).astype(np.uint8)
  c1 = np.rint(0.5 * slices.class_colour(1)).astype(np.uint8)
  # Top row (label): axial (y, x), coronal (z, x), sagittal (z, y), panels side by side.
  top = {(2, 3), (1, w + GAP + 3), (1, 2 * (w + GAP) + 2)}
  bottom = {(r + height + GAP, c) for r, c in top}
  coloured = {tuple(int(i) for i in p) for p in np.argwhere(grid.any(axis=-1))}
  assert coloured == top | bottom
  for r, c in top:
    np.testing.assert_array_equal(grid[r, c], c2)
  for r, c in bottom:
    np.testing.assert_array_equal(grid[r, c], c1)


def test_overlay_grid_zooms_small_volumes_and_keeps_the_image_gray():
  rng = np.random.default_rng(0)
  image = rng.normal(size=(4, 6, 8)).astype(np.float32)  # no channel axis: accepted too
  empty = np.zeros((4, 6, 8), np.uint8)
  grid = slices.overlay_grid(image, empty, empty, 2, min_height=128)
  zoom = 22  # ceil(128 / 6)
  assert grid.shape == (2 * 6 * zoom + GAP, (8 + 8 + 6) * zoom + 2 * GAP, 3)
  assert (grid[..., 0] == grid[..., 1]).all() and (grid[..., 1] == grid[..., 2]).all()
  assert grid.max() > grid.min()
  with pytest.raises(ValueError, match="must share"):
    slices.overlay_grid(image, empty[:3], empty, 2)


# -- run_evaluation → metrics.jsonl and TensorBoard ---------------------------------------


SPEC = DomainSpec("organs", ("MRI",), ("background", "outer", "inner"), "MRI")


def _cases(n: int = 2) -> list[dict]:
  rng = np.random.default_rng(1)
  out = []
  for i in range(n):
    label = np.zeros((6, 8, 10), np.uint8)
    label[1:5, 2:6, 2:8] = 1
    label[2:4, 3:5, 4:6] = 2
    image = (label[..., None] + rng.normal(0, 0.1, (6, 8, 10, 1))).astype(np.float32)
    out.append({"image": image, "label": label, "spacing": np.ones(3, np.float32),
                "case_id": f"case_{i}"})
  return out


def _evaluate(monkeypatch, workdir, tb_images: bool, step: int):
  """run_evaluation with a model that predicts the label, except class 2 → 1 in case 0."""
  val = {"organs": _cases()}
  truth = {id(ex["image"]): ex["label"] for ex in val["organs"]}

  def predict_volume(fn, image, *a, **k):
    pred = truth[id(image)].copy()
    if image is val["organs"][0]["image"]:
      pred[pred == 2] = 1
    return pred
  monkeypatch.setattr(evaluation, "make_predict_fn", lambda parts, device: lambda p, i: None)
  monkeypatch.setattr(evaluate, "predict_volume", predict_volume)
  cfg = config_lib.defaults()
  cfg.train.tb_images = tb_images
  logger = logging_utils.MetricLogger(str(workdir), enabled=True)
  res = evaluation.run_evaluation(None, None, [SPEC], val, config_lib.parse(cfg), (4, 4, 4), 1,
                                  lambda *_: None, logger=logger, step=step)
  logger.close()
  return val, res


def test_run_evaluation_logs_dice_curves_and_one_picture_per_domain(tmp_path, monkeypatch):
  val, res = _evaluate(monkeypatch, tmp_path, True, 5)
  with open(tmp_path / "metrics.jsonl") as f:
    (record,) = [json.loads(line) for line in f]
  assert record["step"] == 5
  assert record["val/organs"] == record["dice/organs/mean"] == res["organs"]["mean_dice"]
  assert record["val/mean_dice"] == record["dice/mean"] == res["organs"]["mean_dice"]
  assert record["dice/organs/outer"] == res["organs"]["dice"]["outer"]
  assert record["dice/organs/inner"] == pytest.approx(0.5)  # case 0 misses it entirely
  tags = tb_values(str(tmp_path / "tensorboard"))
  assert {"val/mean_dice", "dice/mean", "dice/organs/mean", "dice/organs/outer",
          "dice/organs/inner", "images/organs"} <= set(tags)
  assert tags["dice/organs/inner"][0][1].simple_value == pytest.approx(0.5)
  ((step, value),) = tags["images/organs"]
  ex = val["organs"][0]
  pred = ex["label"].copy()
  pred[pred == 2] = 1
  # The first case's picture, from the prediction the Dice was computed on (PNG: lossless).
  assert step == 5
  np.testing.assert_array_equal(png(value), slices.overlay_grid(ex["image"], ex["label"], pred, 3))


def test_train_tb_images_false_logs_curves_only(tmp_path, monkeypatch):
  _evaluate(monkeypatch, tmp_path, False, 1)
  tags = tb_values(str(tmp_path / "tensorboard"))
  assert "dice/organs/inner" in tags and not any(t.startswith("images/") for t in tags)


# -- a real run ----------------------------------------------------------------------------


@pytest.mark.slow
def test_a_smoke_run_writes_dice_curves_and_pictures(tmp_path_factory):
  workdir, _ = smoke_workdir.trained(tmp_path_factory)  # 2 steps, evaluated at the end
  with open(os.path.join(workdir, "eval", "summary.json")) as f:
    summary = json.load(f)
  tags = tb_values(os.path.join(workdir, "tensorboard"))
  for name, d in summary["domains"].items():
    wanted = {f"images/{name}", f"dice/{name}/mean", *(f"dice/{name}/{c}" for c in d["dice"])}
    assert wanted <= set(tags), sorted(tags)
    ((step, dice),) = tags[f"dice/{name}/mean"]
    assert step == summary["step"] and dice.simple_value == pytest.approx(d["mean_dice"])
    ((step, value),) = tags[f"images/{name}"]
    img = png(value)
    assert step == summary["step"] and img.ndim == 3 and img.shape[0] >= 2 * 128
  assert "dice/mean" in tags and "val/mean_dice" in tags
