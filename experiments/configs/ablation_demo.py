"""The demo-scale variance-parameterisation ablation: the demo config with the budget
that lets all 14 variants train, calibrate and report in about 90 minutes on 2 CPU cores
(1200 steps, a third of the demo's).

Every variant of `eesep_jax.analysis.ablation` trains this config with its own overrides,
on the same corpus, seed, batches and optimiser schedule as each other:

    python experiments/ablations/variance_parameterisations.py \
        --config experiments/configs/ablation_demo.py --out runs/ablation-demo \
        --results experiments/ablations/results
"""

from eesep_jax.configs import demo


def get_config():
  config = demo.get_config()
  config.steps = 1200
  config.checkpoint_every = 400
  config.eval_every = 1200
  return config
