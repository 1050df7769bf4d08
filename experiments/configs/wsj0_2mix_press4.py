"""PRESS-Net S (`press-4`) on WSJ0-2mix, 8 kHz min, 4 s segments: the reported 22.9 dB setup.

    eesep train --config experiments/configs/wsj0_2mix_press4.py --workdir gs://BUCKET/press4 \
        --config.data.root=/data/wsj0-mix/2speakers/wav8k/min
"""

from eesep_jax import config_lib


def get_config():
  config = config_lib.base_config(preset="press-4", dataset="wsj0-mix",
                                  data_root="/data/wsj0-mix/2speakers/wav8k/min")
  config.data.dynamic_mixing = True
  config.steps = 1_000_000
  config.batch_size = 64
  config.optimizer.learning_rate = 1e-3
  config.optimizer.warmup_steps = 10_000
  config.model.dtype = "bfloat16"  # Accelerators' compute dtype; parameters stay float32.
  return config
