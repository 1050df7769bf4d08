"""The base of the full-size variance-parameterisation ablation: `press-4` on WSJ0-2mix.

Every variant of `eesep_jax.ablation` trains this config with its own overrides, on
the same data, seed and budget; the budget is a fifth of `wsj0_2mix_press4`'s, so that
the ablation's 11 runs cost about two full trainings. On one TPU host:

    python experiments/ablations/variance_parameterisations.py --out runs/ablation \
        --override data.root=/data/wsj0-mix/2speakers/wav8k/min
"""

from eesep_jax import config_lib


def get_config():
  config = config_lib.base_config(preset="press-4", dataset="wsj0-mix",
                                  data_root="/data/wsj0-mix/2speakers/wav8k/min")
  config.data.dynamic_mixing = True
  config.steps = 200_000
  config.batch_size = 64
  config.optimizer.learning_rate = 1e-3
  config.optimizer.warmup_steps = 10_000
  config.checkpoint_every = 5000
  config.eval_every = 10_000
  return config
