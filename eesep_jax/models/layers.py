"""The blocks of PRESS-Net: a bidirectional linear recurrence, a long depthwise
convolution and a gated feed-forward layer, each a pre-norm residual sub-layer with
LayerScale. Every layer is linear in the number of frames.

Blocks take `[..., frames, width]` features; leading axes are batch (the exit trunk
folds its `C` streams into them).
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from eesep_jax.models.config import PressNetConfig

# LayerScale's initial value: every residual branch starts almost switched off, so
# a freshly initialised deep stack is close to the identity and trains stably.
LAYER_SCALE_INIT = 1e-5

# Range of the recurrence's initial update rates `z = 1 - a`: memories of roughly
# 10 to 1000 frames (5 ms to 0.5 s at stride 4 and 8 kHz).
_GATE_RATE_RANGE = (1e-3, 1e-1)


def _combine(earlier, later):
  decay_earlier, state_earlier = earlier
  decay_later, update_later = later
  return decay_earlier * decay_later, decay_later * state_earlier + update_later


def _scan_frames(decay, update):
  """`h_t = decay_t · h_{t-1} + update_t`, `h_{-1} = 0`, along axis -2."""
  return jax.lax.associative_scan(_combine, (decay, update), axis=decay.ndim - 2)[1]


@jax.custom_vjp
def _linear_recurrence(decay, update):
  return _scan_frames(decay, update)


def _linear_recurrence_forward(decay, update):
  states = _scan_frames(decay, update)
  return states, (decay, states)


def _linear_recurrence_backward(residuals, cotangent):
  # The adjoint of a linear recurrence is the same recurrence run backwards in time,
  # `λ_t = g_t + decay_{t+1} λ_{t+1}`: one more scan instead of differentiating
  # through the scan's tree of slices (several times the program to compile).
  decay, states = residuals
  zero_frame = jnp.zeros_like(decay[..., :1, :])
  next_decay = jnp.concatenate([decay[..., 1:, :], zero_frame], axis=-2)
  flip = functools.partial(jnp.flip, axis=-2)
  adjoint = flip(_scan_frames(flip(next_decay), flip(cotangent)))
  previous_states = jnp.concatenate([zero_frame, states[..., :-1, :]], axis=-2)
  return adjoint * previous_states, adjoint


_linear_recurrence.defvjp(_linear_recurrence_forward, _linear_recurrence_backward)


def bidirectional_linear_recurrence(decay, update):
  """`h_t = decay_t · h_{t±1} + update_t` along axis -2, zero initial state: forward in
  time for the first half of the channels, backward for the second half.

  Both directions share one `lax.associative_scan` (log depth, linear work) over the
  time-flipped second half, which halves the program XLA has to compile; the
  gradient is one more such scan. `decay`, `update`, result: `[..., frames, channels]`.
  """
  half = decay.shape[-1] // 2

  def flip_second_half(x):
    return jnp.concatenate([x[..., :half], jnp.flip(x[..., half:], axis=-2)], axis=-1)

  return flip_second_half(_linear_recurrence(flip_second_half(decay), flip_second_half(update)))


def _gate_bias_init(key, shape, dtype=jnp.float32):
  """Biases whose `sigmoid` is log-uniform over `_GATE_RATE_RANGE`."""
  low, high = jnp.log(jnp.asarray(_GATE_RATE_RANGE))
  rate = jnp.exp(jax.random.uniform(key, shape, jnp.float32, low, high))
  return (jnp.log(rate) - jnp.log1p(-rate)).astype(dtype)


class LayerScale(nn.Module):
  """Per-channel learned scale of a residual branch, initialised at `LAYER_SCALE_INIT`."""

  @nn.compact
  def __call__(self, x):
    scale = self.param("scale", nn.initializers.constant(LAYER_SCALE_INIT), (x.shape[-1],))
    return x * scale.astype(x.dtype)


class Snake(nn.Module):
  """Snake activation `x + sin²(a·x)/a` with a learned per-channel frequency `a`."""

  @nn.compact
  def __call__(self, x):
    frequency = self.param("frequency", nn.initializers.ones, (x.shape[-1],))
    frequency = frequency.astype(x.dtype)
    return x + jnp.square(jnp.sin(frequency * x)) / (frequency + 1e-6)


class BidirectionalRecurrence(nn.Module):
  """minGRU in both directions: `h_t = (1 − z_t)·h_{t−1} + z_t·W x_t`, `z_t = σ(U x_t)`.

  The two directions' states are concatenated, gated by `GELU(V x_t)` and projected
  back to the width. `[..., frames, width] -> [..., frames, width]`.
  """
  config: PressNetConfig

  @nn.compact
  def __call__(self, x):
    cfg = self.config
    hidden = 2 * cfg.rnn_expansion * cfg.width  # Both directions.
    dense = functools.partial(nn.Dense, dtype=cfg.compute_dtype, param_dtype=jnp.float32)
    logits = dense(hidden, bias_init=_gate_bias_init, name="gate")(x)
    values = dense(hidden, name="value")(x)
    output_gate = nn.gelu(dense(hidden, name="output_gate")(x))
    # The scan runs in float32 whatever the compute dtype: products of many decays
    # lose everything in bfloat16.
    rate = jax.nn.sigmoid(logits.astype(jnp.float32))
    states = bidirectional_linear_recurrence(1.0 - rate, rate * values.astype(jnp.float32))
    states = states.astype(cfg.compute_dtype)
    return dense(cfg.width, name="output")(states * output_gate)


class DepthwiseConvolution(nn.Module):
  """GLU -> long depthwise convolution over frames -> SiLU -> projection.

  `[..., frames, width] -> [..., frames, width]`.
  """
  config: PressNetConfig

  @nn.compact
  def __call__(self, x):
    cfg = self.config
    channels = cfg.conv_expansion * cfg.width
    kwargs = dict(dtype=cfg.compute_dtype, param_dtype=jnp.float32)
    y = nn.glu(nn.Dense(2 * channels, **kwargs)(x))
    leading, frames = y.shape[:-2], y.shape[-2]
    y = y.reshape((-1, frames, channels))
    y = nn.Conv(channels, (cfg.conv_kernel,), padding="SAME",
                feature_group_count=channels, **kwargs)(y)
    y = nn.silu(y).reshape(leading + (frames, channels))
    return nn.Dense(cfg.width, **kwargs)(y)


class FeedForward(nn.Module):
  """Gated feed-forward layer (GEGLU). `[..., width] -> [..., width]`."""
  config: PressNetConfig

  @nn.compact
  def __call__(self, x):
    cfg = self.config
    kwargs = dict(dtype=cfg.compute_dtype, param_dtype=jnp.float32)
    value, gate = jnp.split(nn.Dense(2 * cfg.ffn_expansion * cfg.width, **kwargs)(x), 2,
                            axis=-1)
    return nn.Dense(cfg.width, **kwargs)(value * nn.gelu(gate))


class Block(nn.Module):
  """Recurrence, depthwise convolution and feed-forward layer, each as
  `x + LayerScale(Dropout(layer(RMSNorm(x))))`.

  `__call__(x, train) -> (x, None)` so that `nn.scan` can stack blocks;
  `x`: `[..., frames, width]`.
  """
  config: PressNetConfig

  @nn.compact
  def __call__(self, x, train):
    cfg = self.config
    for layer in (BidirectionalRecurrence, DepthwiseConvolution, FeedForward):
      y = layer(cfg)(nn.RMSNorm(dtype=cfg.compute_dtype, param_dtype=jnp.float32)(x))
      y = nn.Dropout(cfg.dropout, deterministic=not train)(y)
      x = x + LayerScale()(y)
    return x, None


class BlockStack(nn.Module):
  """`num_blocks` blocks of identical shape, stacked with `nn.scan` so that compile
  time does not grow with depth; parameters under `blocks` gain a leading
  `[num_blocks]` axis. `[..., frames, width] -> [..., frames, width]`.
  """
  config: PressNetConfig
  num_blocks: int
  remat: bool = False

  @nn.compact
  def __call__(self, x, train):
    if self.num_blocks == 0:
      return x
    block = nn.remat(Block, static_argnums=(2,), prevent_cse=False) if self.remat else Block
    blocks = nn.scan(
        block, variable_axes={"params": 0}, split_rngs={"params": True, "dropout": True},
        in_axes=nn.broadcast, length=self.num_blocks, unroll=self.config.unroll_blocks)
    return blocks(self.config, name="blocks")(x, train)[0]
