"""PRESS-Net S (`press-4`) for speech enhancement with noise (one source), 16 kHz, in
the VoiceBank-DEMAND layout, with the paper's recipe (`config_lib.paper_config`: AdamW
5e-4, 5k warm-up, cosine decay, 4 s segments, bfloat16).

The paper reports its enhancement results on DNS 2020 (the Deep Noise Suppression
challenge's synthetic test set), not on VoiceBank-DEMAND; those figures are not in this
project's design notes (ARCHITECTURE.md), so none is quoted here. To train on DNS 2020,
write its clean/noisy pairs in this layout (`noisy_trainset_28spk_wav/`,
`clean_trainset_28spk_wav/`, `*_testset_wav/`) or use the `folder` kind.

|  | SI-SNRi (exit 4) | parameters | GMAC/s (last exit) |
|---|---|---|---|
| paper (8 kHz, 2 sources; DNS 2020 figures not in the design notes) | - | 3.4 M | 11.3 |
| this config (16 kHz, 1 source; `models.count_params`, `gmacs_by_exit`) | not yet trained | 3.45 M | 14.1 |

    eesep train --config experiments/configs/voicebank_demand_press4.py --workdir runs/vbd \
        --config.data.root=/data/VoiceBank-DEMAND
"""

from eesep_jax import config_lib


def get_config():
  config = config_lib.paper_config(
    preset="press-4",
    dataset="voicebank-demand",
    data_root="/data/VoiceBank-DEMAND",
    sample_rate=16000,
    num_sources=1,
    steps=300_000,
    batch_size=32,
  )
  config.data.train_split = "train"
  config.data.valid_split = "valid"
  config.data.test_split = "test"
  return config
