"""PRESS-Net M (`press-12`) on WSJ0-2mix, 8 kHz min, with the paper's recipe
(`config_lib.paper_config`: AdamW 5e-4, 5k warm-up, cosine decay, 4 s segments,
bfloat16), dynamic mixing and rematerialised blocks.

|  | SI-SNRi (exit 12) | parameters | GMAC/s (exit 8 / 12) |
|---|---|---|---|
| paper (ARCHITECTURE.md) | 24.3 dB | 22.4 M | 54.4 / 79.7 |
| this config (`eesep info --preset press-12`) | not yet trained | 21.2 M | 55.2 / 79.9 |

    eesep train --config experiments/configs/wsj0_2mix_press12.py --workdir gs://BUCKET/press12 \
        --config.data.root=/data/wsj0-mix/2speakers/wav8k/min
"""

from eesep_jax import config_lib


def get_config():
  config = config_lib.paper_config(
    preset="press-12",
    dataset="wsj0-mix",
    data_root="/data/wsj0-mix/2speakers/wav8k/min",
    steps=2_000_000,
    batch_size=64,
  )
  config.data.dynamic_mixing = True
  config.model.remat = True
  return config
