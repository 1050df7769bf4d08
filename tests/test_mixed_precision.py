"""A bfloat16 run trains as a float32 run does: the accelerator configs' default."""

import jax.numpy as jnp
import numpy as np
import pytest

from eesep_jax import config_lib
from eesep_jax import models
from eesep_jax.training import train

STEPS = 50


def _losses(dtype, batches):
  """The train loss of each of `STEPS` steps of `tiny` in `dtype`, from the same seed."""
  config = config_lib.base_config(preset="tiny", dataset="wsj0-mix", data_root="unused")
  config.model.dtype = dtype
  config.model.layer_scale_init = 0.1  # Blocks that matter within 50 steps.
  # Two one-block stages: less to compile for each dtype (the test is mostly compiling).
  config.model.num_exits, config.model.num_exit_blocks = 2, 2
  model = models.PressNet(config_lib.model_config(config))
  optimizer = train.make_optimizer(config.optimizer, total_steps=STEPS)
  state = train.init_train_state(config, model, optimizer, batches[0]["mixture"][:1])
  step = train.make_train_step(config, model, optimizer)
  losses = []
  for k in range(STEPS):
    state, metrics = step(state, batches[k % len(batches)])
    losses.append(float(metrics["train_loss"]))
  return np.asarray(losses)


@pytest.mark.slow
def test_bfloat16_loss_tracks_float32_over_50_steps():
  rng = np.random.default_rng(0)
  t = np.arange(800) / 8000

  def batch():
    # Two harmonic sources per example at random pitches and phases.
    pitch = rng.uniform(100, 300, size=(4, 2, 1))
    phase = rng.uniform(0, 2 * np.pi, size=(4, 2, 1))
    sources = sum(np.sin(2 * np.pi * h * pitch * t + phase) / h for h in (1, 2, 3))
    sources = (0.3 * sources).astype(np.float32)
    return {
      "mixture": jnp.asarray(sources.sum(1)),
      "sources": jnp.asarray(sources),
      "mask": jnp.ones((4, 800), jnp.float32),
    }

  batches = [batch() for _ in range(5)]
  full = _losses("float32", batches)
  half = _losses("bfloat16", batches)
  assert np.all(np.isfinite(half))
  # Training makes progress, so that tracking it means something.
  assert full[-10:].mean() < full[:5].mean() - 0.1 * abs(full[:5].mean())
  # Stated tolerance: every step's bfloat16 loss within 5% of the float32 run's range
  # of losses of it, and their last 10 steps' means within 2% of that range.
  spread = full.max() - full.min()
  assert np.max(np.abs(half - full)) <= 0.05 * spread, np.abs(half - full).max() / spread
  assert abs(half[-10:].mean() - full[-10:].mean()) <= 0.02 * spread
