"""Configs of the comparison's settings: a preset, a model mode, a step budget and overrides.

Shared by `paper_table.py` and the ablations built on its runs; defines no
flags, so any experiment script can import it.
"""


def set_dotted(config, dotted: str, value) -> None:
  """config[dotted] = value, converted to the existing value's type."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  from u2net_jax.errors import ConfigError  # pylint: disable=g-import-not-at-top
  node = config
  path = dotted.split(".")
  for i, key in enumerate(path):
    if not isinstance(node, ml_collections.ConfigDict) or key not in node:
      raise ConfigError(f"--config_overrides key {dotted!r}: the config has no "
                        f"{'.'.join(path[:i + 1])!r}.")
    if i < len(path) - 1:
      node = node[key]
  leaf, old = path[-1], node[path[-1]]
  try:
    if isinstance(value, str) and not isinstance(old, str) and old is not None:
      if isinstance(old, bool):
        value = value.lower() in ("1", "true", "yes")
      elif isinstance(old, tuple):
        elem = type(old[0]) if old else int
        value = tuple(elem(v) for v in value.replace("x", ",").split(",") if v)
      else:
        value = type(old)(value)
    node[leaf] = value
  except (TypeError, ValueError) as e:
    raise ConfigError(f"--config_overrides {dotted}={value!r}: not a "
                      f"{type(old).__name__} ({e}).") from None


def setting_config(module, preset: str, mode: str, steps: int, overrides) -> object:
  """The preset's config for one setting, with the shared budget and overrides."""
  c = module.get_config(preset)
  if c.preset == "default":
    # The comparison scores what each setting learnt: the network's output, not
    # post-processed (results/ were measured so; the main command post-processes).
    c.eval.postprocess = "none"
    # ... of the separable model as the table measured it (separable downsampling;
    # `--config_overrides=model.downsample=dense` for the main command's model).
    c.model.downsample = "separable"
    # ... with the sliding-window overlap it was measured with.
    c.eval.overlap = 0.5
  c.model.mode = mode
  if steps:
    c.train.steps = steps
  for item in overrides:
    key, sep, value = item.partition("=")
    if not sep:
      from u2net_jax.errors import ConfigError  # pylint: disable=g-import-not-at-top
      raise ConfigError(f"--config_overrides item {item!r} is not key.path=value.")
    if key.strip().startswith("extend.") and not c.extend.new_domains:
      continue  # the new domain's options (add_domain.py); the settings add no domain
    set_dotted(c, key.strip(), value.strip())
  return c
