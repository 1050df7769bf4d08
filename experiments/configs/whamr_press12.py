"""PRESS-Net M (`press-12`) on WHAMR! (noisy, reverberant 2-speaker separation to the
anechoic sources, `sep_reverb_noisy`, 8 kHz min), with the paper's recipe
(`config_lib.paper_config`: AdamW 5e-4, 5k warm-up, cosine decay, 4 s segments,
bfloat16) and rematerialised blocks.

|  | SI-SNRi (exit 12) | parameters | GMAC/s (exit 8 / 12) |
|---|---|---|---|
| paper | not in the design notes (ARCHITECTURE.md quotes WSJ0-2mix only) | 22.4 M | 54.4 / 79.7 |
| this config (`eesep info --preset press-12`) | not yet trained | 21.2 M | 55.2 / 79.9 |

    eesep train --config experiments/configs/whamr_press12.py --workdir gs://BUCKET/whamr12 \
        --config.data.root=/data/whamr/wav8k/min
"""

from eesep_jax import config_lib


def get_config():
  config = config_lib.paper_config(
    preset="press-12",
    dataset="whamr",
    data_root="/data/whamr/wav8k/min",
    steps=2_000_000,
    batch_size=64,
  )
  config.data.options.task = "sep_reverb_noisy"
  config.model.remat = True
  return config
