"""`press-4` on WHAMR! (noisy, reverberant 2-speaker separation, 8 kHz min).

    eesep train --config experiments/configs/whamr_press4.py --workdir runs/whamr \
        --config.data.root=/data/whamr/wav8k/min
"""

from eesep_jax import config_lib


def get_config():
  config = config_lib.base_config(preset="press-4", dataset="whamr",
                                  data_root="/data/whamr/wav8k/min")
  config.data.options.task = "sep_reverb_noisy"
  config.steps = 1_000_000
  config.batch_size = 64
  config.optimizer.warmup_steps = 10_000
  config.model.dtype = "bfloat16"  # Accelerators' compute dtype; parameters stay float32.
  return config
