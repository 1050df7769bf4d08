"""`press-4` on Libri2Mix (8 kHz, min, clean mixtures, train-360).

    eesep train --config experiments/configs/libri2mix_press4.py --workdir runs/libri2mix \
        --config.data.root=/data/Libri2Mix/wav8k/min
"""

from eesep_jax import config_lib


def get_config():
  config = config_lib.base_config(preset="press-4", dataset="librimix",
                                  data_root="/data/Libri2Mix/wav8k/min")
  config.data.train_split = "train-360"
  config.data.valid_split = "dev"
  config.data.test_split = "test"
  config.data.options.mixture = "clean"
  config.steps = 1_000_000
  config.batch_size = 64
  config.optimizer.warmup_steps = 10_000
  config.model.dtype = "bfloat16"  # Accelerators' compute dtype; parameters stay float32.
  return config
