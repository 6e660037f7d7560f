r"""Add a domain to a trained universal model without touching the old ones.

Trains only the new domain's weights (its input conv, depthwise convs, norms
and output layer); every shared weight and every old domain is frozen and has
no optimizer state, so the old domains' predictions stay bit-identical. The
result is one checkpoint holding all domains; `eval/summary.json` gains an
"extension" entry with the new domain's Dice, the parameters it added and the
Dice of an independent model trained on it with the same step budget.

Presets (`--config=experiments/add_domain.py[:preset]`):
  (default)  synthetic spleen added to the default five-domain run
             (`init_from=runs/five_domain`, the main job's workdir).
  msd        MSD Task09 Spleen added to an `five_domain.py:msd` run.
  smoke      tiny, for tests (pass --config.init_from=<smoke workdir>).

Examples:
  python run.py --config=experiments/five_domain.py        # the base run
  python run.py --config=experiments/add_domain.py
  python run.py --config=experiments/add_domain.py --config.extend.init=similar
  # Fine-tune a subset of a run's domains, one of them renamed:
  python run.py --config=experiments/add_domain.py --config.data.tasks=heart,liver \
      --config.extend.new_domains= --config.extend.train=all
"""

import ml_collections

from experiments import five_domain


def get_config(preset: str = "") -> ml_collections.ConfigDict:
  """five_domain.py's preset plus the new domain, started from `init_from`."""
  c = five_domain.get_config(preset)
  base_tasks = c.data.tasks
  c.data.tasks = base_tasks + ",spleen"
  c.init_from = {"": "runs/five_domain", "default": "runs/five_domain",
                 "msd": "runs/five_domain_msd"}.get(preset, "")
  c.extend = ml_collections.ConfigDict()
  c.extend.new_domains = "spleen"      # domains not taken from init_from
  c.extend.init = "scratch"            # scratch | similar | copy:<base domain>
  c.extend.rename = ""                 # 'new=old,...': take a base domain's weights
  c.extend.train = "new"               # new: only new domains; all: everything listed
  c.extend.compare_independent = True  # also train an independent model, same budget
  # One domain only: its share of the base run's steps, and no shared weights
  # to move, so a short run suffices.
  c.train.steps = {"smoke": 4}.get(preset, max(c.train.steps // 4, 1))
  c.train.warmup_steps = 0
  c.train.checkpoint_every = {"smoke": 2}.get(preset, c.train.checkpoint_every)
  return c
