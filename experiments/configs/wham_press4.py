"""PRESS-Net S (`press-4`) on WHAM! (noisy 2-speaker separation, `sep_noisy`, 8 kHz
min), with the paper's recipe (`config_lib.paper_config`: AdamW 5e-4, 5k warm-up,
cosine decay, 4 s segments, bfloat16).

|  | SI-SNRi (exit 4) | parameters | GMAC/s (last exit) |
|---|---|---|---|
| paper | not in the design notes (ARCHITECTURE.md quotes WSJ0-2mix only) | 3.4 M | 11.3 |
| this config (`eesep info --preset press-4`) | not yet trained | 3.46 M | 11.4 |

    eesep train --config experiments/configs/wham_press4.py --workdir gs://BUCKET/wham4 \
        --config.data.root=/data/wham/wav8k/min
"""

from eesep_jax import config_lib


def get_config():
  config = config_lib.paper_config(
    preset="press-4",
    dataset="wham",
    data_root="/data/wham/wav8k/min",
    steps=1_000_000,
    batch_size=64,
  )
  config.data.options.task = "sep_noisy"
  return config
