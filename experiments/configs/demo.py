"""The quickstart experiment: the embedded eSpeak corpus, the `tiny` preset, 2 CPU cores.

    eesep train --config experiments/configs/demo.py --workdir runs/demo --config.steps=200
"""

from eesep_jax import config_lib


def get_config():
  config = config_lib.base_config(preset="tiny", dataset="wsj0-mix", data_root="data/demo")
  config.data.synthesize_if_missing = True
  config.data.segment_seconds = 2.0
  config.steps = 1500
  config.batch_size = 8
  config.optimizer.learning_rate = 2e-3
  config.optimizer.warmup_steps = 100
  config.checkpoint_every = 250
  config.eval_every = 500
  config.log_every = 25
  config.eval_max_utterances = 32
  return config
