"""PRESS-Net M (`press-12`) on WSJ0-2mix, 8 kHz min: the reported 24.3 dB setup.

    eesep train --config experiments/configs/wsj0_2mix_press12.py --workdir gs://BUCKET/press12 \
        --config.data.root=/data/wsj0-mix/2speakers/wav8k/min
"""

from eesep_jax import config_lib


def get_config():
  config = config_lib.base_config(preset="press-12", dataset="wsj0-mix",
                                  data_root="/data/wsj0-mix/2speakers/wav8k/min")
  config.data.dynamic_mixing = True
  config.steps = 2_000_000
  config.batch_size = 64
  config.optimizer.learning_rate = 5e-4
  config.optimizer.warmup_steps = 20_000
  config.model.remat = True
  config.model.dtype = "bfloat16"
  return config
