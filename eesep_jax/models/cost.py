"""Size and compute of a `PressNetConfig`, from shapes and XLA's cost analysis only:
no parameter is allocated and nothing is compiled."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from eesep_jax.models.press_net import apply_stage
from eesep_jax.models.press_net import initial_variance_state
from eesep_jax.models.press_net import PressNet
from eesep_jax.models.press_net import stage_params


def _abstract_variables(config, num_samples):
  mixture = jax.ShapeDtypeStruct((1, num_samples), jnp.float32)
  return jax.eval_shape(PressNet(config).init, jax.random.key(0), mixture), mixture


def count_params(config):
  """Number of parameters of `PressNet(config)`."""
  variables, _ = _abstract_variables(config, config.encoder_kernel)
  return int(sum(np.prod(p.shape) for p in jax.tree.leaves(variables["params"])))


def _flops(function, *args):
  # Lowered for the CPU whatever the default backend: the count is then the same on
  # every machine, and some GPU plugins return no cost analysis at all.
  lowered = jax.jit(function).trace(*args).lower(lowering_platforms=("cpu",))
  return lowered.cost_analysis()["flops"]


@functools.cache  # Lowering the model takes seconds; a config's count never changes.
def gmacs_by_exit(config, num_samples=None):
  """Giga multiply-accumulates needed to reach each exit, for one example.

  `num_samples` of audio (default one second at `config.sample_rate`, so GMAC/s).
  XLA counts a loop body once, so the encoder part (`PressNet.encode`) and one stage
  (`apply_stage`) are lowered on their own with the block scans unrolled, and exit
  `k` costs `encode + k · stage` (every stage has the same shape). FLOPs / 2 = MACs;
  element-wise operations count as half a MAC each. The layers are counted in their
  CPU forms (`PressNetConfig.with_cpu_forms`) whatever the backend, so the count is
  the model's, the same on every machine.

  Returns:
    a tuple of `config.num_exits` floats.
  """
  num_samples = num_samples or config.sample_rate
  config = dataclasses.replace(config.with_cpu_forms(), unroll_blocks=True)
  variables, mixture = _abstract_variables(config, num_samples)
  encode = functools.partial(PressNet(config).apply, method=PressNet.encode)
  carry = jax.eval_shape(encode, variables, mixture)
  variance_state = jax.eval_shape(lambda: initial_variance_state(config, 1, num_samples))

  def stage(params, carry, variance_state):
    return apply_stage(config, params, carry, num_samples, variance_state)

  encode_flops = _flops(encode, variables, mixture)
  stage_flops = _flops(stage, jax.eval_shape(stage_params, variables, 0), carry, variance_state)
  return tuple((encode_flops + k * stage_flops) / 2e9 for k in range(1, config.num_exits + 1))
