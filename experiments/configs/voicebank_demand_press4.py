"""`press-4` for speech enhancement (one source) on VoiceBank-DEMAND at 16 kHz.

    eesep train --config experiments/configs/voicebank_demand_press4.py --workdir runs/vbd \
        --config.data.root=/data/VoiceBank-DEMAND
"""

from eesep_jax import config_lib


def get_config():
  config = config_lib.base_config(preset="press-4", dataset="voicebank-demand",
                                  data_root="/data/VoiceBank-DEMAND", sample_rate=16000,
                                  num_sources=1)
  config.data.train_split = "train"
  config.data.valid_split = "valid"
  config.data.test_split = "test"
  config.data.segment_seconds = 2.0
  config.steps = 300_000
  config.batch_size = 32
  config.optimizer.warmup_steps = 5_000
  config.model.dtype = "bfloat16"  # Accelerators' compute dtype; parameters stay float32.
  return config
