"""The quickstart experiment: a `tiny` network on the embedded corpus, sized for 2 CPU cores.

`eesep train --config demo --workdir runs/demo` trains it from any directory; `make
demo` trains, calibrates and evaluates it. It trains on `data/demo` (eSpeak NG and
Piper voices, augmented dynamic mixing) and checks on speech no corpus trains on
(`data/checks`). Measurements behind its choices: experiments/benchmarks/README.md,
"The demo config".
"""

from eesep_jax import config_lib


def get_config():
  config = config_lib.base_config(preset="tiny", dataset="wsj0-mix", data_root="data/demo")
  config.model.encoder_stride = 16
  config.model.encoder_kernel = 32
  config.model.num_shared_blocks = 4
  config.model.num_exit_blocks = 6  # Two blocks per stage.
  # A shallow network trained for minutes learns faster with its residual branches on.
  config.model.layer_scale_init = 1.0
  # Training makes the corpus at data/demo if it is missing; at a root given with
  # --config.data.root only with --config.data.synthesize_if_missing=True as well.
  config.data.synthesize_if_missing = True
  # The demo's held-out test set: other languages' voices (`data.ensure_heldout_corpus`).
  config.data.heldout_root = "data/heldout"
  config.data.segment_seconds = 1.0
  config.data.dynamic_mixing = True
  config.data.augment = True
  # Check sets of speech no corpus trains on (`data.ensure_check_set`), made and
  # evaluated by the demo: Kokoro-82M (the unseen-engine check) and a recorded voice.
  # `check_mixtures` is the Kokoro sets' size; the recorded set has its own 24.
  config.data.check_root = "data/checks"
  config.data.check_sets = ("kokoro", "recorded")
  config.data.check_mixtures = 300
  # The estimate learns from the SNR, the variance head from the NLL (docs/method.md §3):
  # the NLL alone starves the mean of gradient early on.
  config.loss.mean_loss = "snr"
  # The last exit's loss counts most: exit 1 need not be as good as the last, and the
  # lighter the early exits, the more stopping there costs (measured in the benchmarks
  # README, "The demo config").
  config.loss.exit_weights = (0.15, 0.3, 1.0)
  config.steps = 3500
  config.batch_size = 4
  config.optimizer.learning_rate = 4e-3
  config.optimizer.warmup_steps = 50
  config.checkpoint_every = 500
  config.eval_every = 1750
  config.log_every = 10
  config.eval_max_utterances = 8
  # The stopping target of `eesep separate` with this run. `make demo` reports at the
  # target it chooses on the validation split as a user would
  # (`operating_points.choose_target`), and at this one when none qualifies.
  config.inference.target_snr_db = 5.0
  # A high confidence: the utterances exit 1 already separates well are those that gain
  # most from depth, so a lower p saves more compute at a larger loss (measured in the
  # benchmarks README, "The demo config").
  config.inference.confidence = 0.9
  # The exit probabilities are fitted to that decision, with a variance that widens with
  # the estimates' cross-talk: fitted by likelihood, they promise speech the network never
  # heard three times what it reaches (measured in the benchmarks README, "Cross-talk
  # calibration").
  config.evaluation.calibration_method = "brier"
  return config
