"""The quickstart experiment: the embedded eSpeak corpus, the `tiny` preset, 2 CPU cores.

About 10 minutes of training on 2 CPU cores (`make demo` runs it, then evaluates):

    eesep train --config experiments/configs/demo.py --workdir runs/demo --config.steps=200
"""

from eesep_jax import config_lib


def get_config():
  config = config_lib.base_config(preset="tiny", dataset="wsj0-mix", data_root="data/demo")
  # Training makes the corpus at data/demo if it is missing; at a root given with
  # --config.data.root only with --config.data.synthesize_if_missing=True as well.
  config.data.synthesize_if_missing = True
  # The demo's held-out test set: other languages' voices (`data.ensure_heldout_corpus`).
  config.data.heldout_root = "data/heldout"
  config.data.segment_seconds = 1.0
  config.steps = 600
  config.batch_size = 4
  config.optimizer.learning_rate = 2e-3
  config.optimizer.warmup_steps = 50
  config.checkpoint_every = 100
  config.eval_every = 300
  config.log_every = 10
  config.eval_max_utterances = 8
  return config
