"""PRESS-Net S (`press-4`) on Libri2Mix (8 kHz, min, clean mixtures, train-360), with
the paper's recipe (`config_lib.paper_config`: AdamW 5e-4, 5k warm-up, cosine decay,
4 s segments, bfloat16).

|  | SI-SNRi (exit 4) | parameters | GMAC/s (last exit) |
|---|---|---|---|
| paper | not in the design notes (ARCHITECTURE.md quotes WSJ0-2mix only) | 3.4 M | 11.3 |
| this config (`eesep info --preset press-4`) | not yet trained | 3.46 M | 11.4 |

    eesep train --config experiments/configs/libri2mix_press4.py --workdir gs://BUCKET/libri2mix4 \
        --config.data.root=/data/Libri2Mix/wav8k/min
"""

from eesep_jax import config_lib


def get_config():
  config = config_lib.paper_config(
    preset="press-4",
    dataset="librimix",
    data_root="/data/Libri2Mix/wav8k/min",
    steps=1_000_000,
    batch_size=64,
  )
  config_lib.librimix_splits(config)
  return config
