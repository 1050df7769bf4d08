"""The base of the full-size variance-parameterisation ablation: `wsj0_2mix_press4`
(`press-4` on WSJ0-2mix) with a fifth of its steps.

Every variant of `eesep_jax.analysis.ablation` trains this config with its own overrides, on
the same data, seed and budget; a fifth of the budget makes the ablation's 11 runs
cost about two full trainings. On one TPU host:

    python experiments/ablations/variance_parameterisations.py --out runs/ablation \
        --override data.root=/data/wsj0-mix/2speakers/wav8k/min
"""

import pathlib

from eesep_jax import config_lib


def get_config():
  config = config_lib.load_config(pathlib.Path(__file__).with_name("wsj0_2mix_press4.py"))
  config.steps //= 5
  config.checkpoint_every = 5000
  config.eval_every = 10_000
  return config
