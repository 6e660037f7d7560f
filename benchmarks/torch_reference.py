r"""PyTorch (CPU) reference of `bench.py --preset=cpu`: same model, same step.

A plain, eager PyTorch reimplementation of exactly what
`benchmarks/bench.py --preset=cpu` times, so that PyTorch can be measured on
the same machine as the JAX model:

  model   the separable 3D U²-Net (`u2net_jax.models.U2Net`, mode and
          downsample 'separable', deep supervision on), F0 = 16, 4 levels
          (features 16, 32, 64, 128), five domains each with 1 input channel
          and 2 classes; 262,102 parameters, as the JAX model.
  step    forward + backward + Adam (lr 3e-4, no weight decay) on one domain's
          batch, domains round-robin; loss = cross-entropy averaged over all
          voxels. Inference = the forward pass of the same batch under
          `torch.no_grad()`.
  data    batch 2, patch 64³, float32; images standard normal, labels
          uniform < 0.3, drawn with NumPy as in bench.py (seed 0).

Structure (`u2net_jax/models.py` and `u2net_jax/layers.py` are authoritative):
  input:    per-domain dense 3³ conv (1 → F0, no bias) → norm → act
  encoder:  level l: act(x + unit2(act(unit1(x)))); between levels a stride-2
            separable unit (F_l → F_{l+1}) → act
  decoder:  y = act(up(upsample×2(x))); y = concat([y, skip]);
            y = act(unit1(y)) (2F_l → F_l); y = act(unit2(y)) (F_l → F_l)
  heads:    at decoder levels 2, 1: h = act(norm(1³ conv + bias));
            ds = upsample(h if ds is None else h + ds);
            logits = per-domain 1³ out conv (+ bias) + ds
  unit:     per-domain depthwise 3³ (also in the 1³ units) → norm → act →
            shared pointwise 1³ (no bias) → norm (the caller applies act)
Norms are per-domain affine InstanceNorms (eps 1e-5), act is LeakyReLU(0.01).
'SAME' padding as XLA's: for stride 2 and even sizes, zero padding only at
the end of each axis. Per-domain modules live in `nn.ModuleDict`s keyed by
domain name; only the pointwise convs are shared. Weights are He-normal
(std sqrt(2 / fan_in)), biases 0, norm scales 1: the same distributions as the
JAX model (not the same values; timing does not depend on them).

Torch is not a project dependency; install it into a side venv:
  python3 -m venv /work/venv_torch
  /work/venv_torch/bin/pip install torch numpy \
      --index-url https://download.pytorch.org/whl/cpu   # or plain PyPI

Usage:
  /work/venv_torch/bin/python benchmarks/torch_reference.py [--out FILE]
      [--layout=default|channels_last_3d] [--threads N] [--steps 5] [--warmup 2]
  /work/venv_torch/bin/python benchmarks/torch_reference.py --params_only
  /work/venv_torch/bin/python benchmarks/torch_reference.py \
      --patch=16 --features_root=4 --steps=1 --warmup=1     # tiny check

Prints one JSON object (`--out` also writes it). Times are medians of
`--steps` timed steps after `--warmup` untimed ones; voxels/s = batch × patch
voxels / median time. Eager mode compiles nothing: `compile_s` is 0 and
`first_step_s` is the first (warm-up) train step's time.
"""

from __future__ import annotations

import os
import sys

# This script runs in a side venv that has torch but not this project
# installed: the repository root must be importable for `benchmarks.cpu_info`.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import cpu_info  # pylint: disable=g-import-not-at-top,wrong-import-position

import argparse
import json
import math
import resource
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

DOMAINS = ("heart", "liver", "hippocampus", "prostate", "pancreas")
IN_CHANNELS = 1
NUM_CLASSES = 2
NUM_LEVELS = 4
BATCH = 2
LR = 3e-4
SLOPE = 0.01
LAYOUTS = ("default", "channels_last_3d")


def act(x: torch.Tensor) -> torch.Tensor:
  return F.leaky_relu(x, SLOPE)


def he_normal_(weight: torch.Tensor, fan_in: int) -> torch.Tensor:
  """Fills `weight` in place with N(0, 2 / fan_in), as `layers.he_normal`."""
  with torch.no_grad():
    return weight.normal_(0.0, math.sqrt(2.0 / fan_in))


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
  """(low, high) zero padding of XLA's 'SAME' for one axis."""
  out = -(-size // stride)
  total = max((out - 1) * stride + kernel - size, 0)
  return total // 2, total - total // 2


def upsample(x: torch.Tensor) -> torch.Tensor:
  """Nearest-neighbour ×2 on D, H, W."""
  return F.interpolate(x, scale_factor=2, mode="nearest")


def instance_norms(features: int, names) -> nn.ModuleDict:
  """Per-domain affine InstanceNorms (scale 1, bias 0, eps 1e-5, no running stats)."""
  return nn.ModuleDict({n: nn.InstanceNorm3d(features, eps=1e-5, affine=True) for n in names})


def convs(in_features: int, out_features: int, kernel_size: int, names, *, stride: int = 1,
          groups: int = 1, bias: bool = False) -> nn.ModuleDict:
  """Per-domain convs without padding (padding is applied by the caller), He-normal."""
  mods = {}
  for n in names:
    conv = nn.Conv3d(in_features, out_features, kernel_size, stride=stride, padding=0,
                     groups=groups, bias=bias)
    he_normal_(conv.weight, kernel_size ** 3 * (in_features // groups))
    if bias:
      nn.init.zeros_(conv.bias)
    mods[n] = conv
  return nn.ModuleDict(mods)


def conv_same(conv: nn.Conv3d, x: torch.Tensor) -> torch.Tensor:
  """Applies an unpadded conv with XLA 'SAME' padding (asymmetric where needed)."""
  k, s = conv.kernel_size[0], conv.stride[0]
  pads = [same_padding(n, k, s) for n in x.shape[2:]]
  if any(p != (0, 0) for p in pads):
    # F.pad lists the last axis first: (W_lo, W_hi, H_lo, H_hi, D_lo, D_hi).
    x = F.pad(x, [p for pad in reversed(pads) for p in pad])
  return conv(x)


class ConvUnit(nn.Module):
  """Separable unit: per-domain depthwise 3³ → norm → act → shared pointwise 1³ → norm.

  The output is normalized but not activated. The depthwise conv is 3³ also in
  the decoder's 1³ units (as in the official code and the JAX model).
  """

  def __init__(self, in_features: int, out_features: int, names, stride: int = 1):
    super().__init__()
    self.dw = convs(in_features, in_features, 3, names, stride=stride, groups=in_features)
    self.dw_norm = instance_norms(in_features, names)
    self.pw = nn.Conv3d(in_features, out_features, 1, bias=False)  # shared
    he_normal_(self.pw.weight, in_features)
    self.norm = instance_norms(out_features, names)

  def forward(self, x: torch.Tensor, domain: str) -> torch.Tensor:
    y = act(self.dw_norm[domain](conv_same(self.dw[domain], x)))
    return self.norm[domain](self.pw(y))


class EncoderLevel(nn.Module):
  """act(x + unit2(act(unit1(x))))."""

  def __init__(self, features: int, names):
    super().__init__()
    self.unit1 = ConvUnit(features, features, names)
    self.unit2 = ConvUnit(features, features, names)

  def forward(self, x: torch.Tensor, domain: str) -> torch.Tensor:
    y = act(self.unit1(x, domain))
    return act(x + self.unit2(y, domain))


class DecoderLevel(nn.Module):
  """Upsample → unit → concat skip → unit (2F → F) → unit (F → F, the '1³' unit)."""

  def __init__(self, in_features: int, features: int, names):
    super().__init__()
    self.up = ConvUnit(in_features, features, names)
    self.unit1 = ConvUnit(2 * features, features, names)
    self.unit2 = ConvUnit(features, features, names)

  def forward(self, x: torch.Tensor, skip: torch.Tensor, domain: str) -> torch.Tensor:
    y = act(self.up(upsample(x), domain))
    y = torch.cat([y, skip], dim=1)
    y = act(self.unit1(y, domain))
    return act(self.unit2(y, domain))


class U2Net(nn.Module):
  """The separable universal 3D U-Net; call with x (B, C, D, H, W) and a domain name.

  Returns logits (B, K, D, H, W).
  """

  def __init__(self, names=DOMAINS, *, features_root: int = 16, num_levels: int = NUM_LEVELS,
               in_channels: int = IN_CHANNELS, num_classes: int = NUM_CLASSES,
               deep_supervision: bool = True):
    super().__init__()
    f = [features_root * 2 ** l for l in range(num_levels)]
    self.features = f
    self.num_levels = num_levels
    self.in_conv = convs(in_channels, f[0], 3, names)
    self.in_norm = instance_norms(f[0], names)
    self.encoder = nn.ModuleList([EncoderLevel(f[l], names) for l in range(num_levels)])
    self.down = nn.ModuleList([ConvUnit(f[l], f[l + 1], names, stride=2)
                               for l in range(num_levels - 1)])
    self.decoder = nn.ModuleList([DecoderLevel(f[l + 1], f[l], names)
                                  for l in range(num_levels - 1)])
    self.ds_levels = tuple(l for l in (2, 1) if deep_supervision and l < num_levels - 1)
    self.ds_conv = nn.ModuleDict({str(l): convs(f[l], num_classes, 1, names, bias=True)
                                  for l in self.ds_levels})
    self.ds_norm = nn.ModuleDict({str(l): instance_norms(num_classes, names)
                                  for l in self.ds_levels})
    self.out_conv = convs(f[0], num_classes, 1, names, bias=True)

  def forward(self, x: torch.Tensor, domain: str) -> torch.Tensor:
    y = act(self.in_norm[domain](conv_same(self.in_conv[domain], x)))
    skips = []
    for l in range(self.num_levels):
      y = self.encoder[l](y, domain)
      if l < self.num_levels - 1:
        skips.append(y)
        y = act(self.down[l](y, domain))
    ds = None
    for l in range(self.num_levels - 2, -1, -1):
      y = self.decoder[l](y, skips[l], domain)
      if l in self.ds_levels:
        h = act(self.ds_norm[str(l)][domain](self.ds_conv[str(l)][domain](y)))
        ds = upsample(h if ds is None else h + ds)
    logits = self.out_conv[domain](y)
    if ds is not None:
      logits = logits + ds
    return logits


def param_count(model: nn.Module) -> int:
  return sum(p.numel() for p in model.parameters())


def _median_time(fn, steps: int, warmup: int) -> tuple[float, list[float], list[float]]:
  """(median, timed step times, warm-up step times)."""
  warm = []
  for i in range(warmup):
    t0 = time.perf_counter()
    fn(i)
    warm.append(time.perf_counter() - t0)
  times = []
  for i in range(steps):
    t0 = time.perf_counter()
    fn(warmup + i)
    times.append(time.perf_counter() - t0)
  return statistics.median(times), times, warm


def run(*, layout: str = "default", threads: int | None = None, steps: int = 5,
        warmup: int = 2, patch: int = 64, features_root: int = 16, seed: int = 0) -> dict:
  """Runs the benchmark; returns the result dict."""
  if layout not in LAYOUTS:
    raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
  threads = threads or os.cpu_count() or 1
  torch.set_num_threads(threads)
  torch.manual_seed(seed)
  fmt = torch.channels_last_3d if layout == "channels_last_3d" else torch.contiguous_format

  model = U2Net(features_root=features_root).to(memory_format=fmt)
  params = param_count(model)
  opt = torch.optim.Adam(model.parameters(), lr=LR, weight_decay=0.0)

  # The same arrays as bench.py: NumPy, (B, D, H, W, 1) images, then NCDHW.
  rng = np.random.default_rng(seed)
  shape = (BATCH, patch, patch, patch)
  image_np = rng.standard_normal((*shape, IN_CHANNELS), np.float32)
  label_np = (rng.random(shape) < 0.3).astype(np.int64)
  image = torch.from_numpy(np.ascontiguousarray(np.moveaxis(image_np, -1, 1)))
  image = image.contiguous(memory_format=fmt)
  label = torch.from_numpy(label_np)

  losses = []

  def train_once(i):
    domain = DOMAINS[i % len(DOMAINS)]
    opt.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(image, domain), label)
    loss.backward()
    opt.step()
    losses.append(loss.item())

  train_s, train_all, train_warm = _median_time(train_once, steps, warmup)
  if not all(math.isfinite(l) for l in losses):
    raise RuntimeError("the train step produced a non-finite loss")

  def infer_once(i):
    with torch.no_grad():
      model(image, DOMAINS[i % len(DOMAINS)])

  infer_s, infer_all, _ = _median_time(infer_once, steps, warmup)

  voxels = BATCH * patch ** 3
  return {
      "preset": "cpu",
      "framework": "pytorch",
      "torch_version": torch.__version__,
      "layout": layout,
      "threads": threads,
      "params": params,
      "train_step_s": train_s,
      "train_voxels_per_s": voxels / train_s,
      "infer_step_s": infer_s,
      "infer_voxels_per_s": voxels / infer_s,
      "compile_s": 0.0,  # eager
      "first_step_s": (train_warm or train_all)[0],
      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
      "train_step_s_all": [round(t, 4) for t in train_all],
      "infer_step_s_all": [round(t, 4) for t in infer_all],
      # Extra context.
      "batch": BATCH,
      "patch": [patch] * 3,
      "features": model.features,
      "compute_dtype": "float32",
      "steps": steps,
      "warmup": warmup,
      "final_loss": losses[-1],
      **cpu_info.machine(),
  }


def main(argv=None) -> dict:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--layout", default="default", choices=LAYOUTS,
                  help="memory format of the model and the input")
  ap.add_argument("--threads", type=int, default=os.cpu_count(),
                  help="torch.set_num_threads (default: os.cpu_count())")
  ap.add_argument("--steps", type=int, default=5, help="timed steps (median reported)")
  ap.add_argument("--warmup", type=int, default=2, help="untimed steps before timing")
  ap.add_argument("--patch", type=int, default=64, help="cubic patch size (cpu preset: 64)")
  ap.add_argument("--features_root", type=int, default=16, help="F0 (cpu preset: 16)")
  ap.add_argument("--params_only", action="store_true",
                  help="build the model, print its parameter count, run nothing")
  ap.add_argument("--out", default="", help="also write the JSON object to this file")
  args = ap.parse_args(argv)
  if args.patch % 2 ** (NUM_LEVELS - 1):
    ap.error(f"--patch must be a multiple of {2 ** (NUM_LEVELS - 1)}")
  if args.params_only:
    result = {"framework": "pytorch", "features_root": args.features_root,
              "params": param_count(U2Net(features_root=args.features_root))}
  else:
    result = run(layout=args.layout, threads=args.threads, steps=args.steps,
                 warmup=args.warmup, patch=args.patch, features_root=args.features_root)
  text = json.dumps(result)
  print(text)
  if args.out:
    with open(args.out, "w") as f:
      f.write(text + "\n")
  return result


if __name__ == "__main__":
  main()
