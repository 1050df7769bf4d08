"""PRESS-Net S (`press-4`) on WSJ0-2mix, 8 kHz min, with the paper's recipe
(`config_lib.paper_config`: AdamW 5e-4, 5k warm-up, cosine decay, 4 s segments,
bfloat16) and dynamic mixing.

|  | SI-SNRi (exit 4) | parameters | GMAC/s (last exit) |
|---|---|---|---|
| paper (ARCHITECTURE.md) | 22.9 dB | 3.4 M | 11.3 |
| this config (`eesep info --preset press-4`) | not yet trained | 3.46 M | 11.4 |

    eesep train --config experiments/configs/wsj0_2mix_press4.py --workdir gs://BUCKET/press4 \
        --config.data.root=/data/wsj0-mix/2speakers/wav8k/min
"""

from eesep_jax import config_lib


def get_config():
  config = config_lib.paper_config(
    preset="press-4",
    dataset="wsj0-mix",
    data_root="/data/wsj0-mix/2speakers/wav8k/min",
    steps=1_000_000,
    batch_size=64,
  )
  config.data.dynamic_mixing = True
  return config
