"""The blocks of PRESS-Net: a bidirectional linear recurrence, a long depthwise
convolution and a gated feed-forward layer, each a pre-norm residual sub-layer with
LayerScale. Every layer is linear in the number of frames.

Blocks take `[..., frames, width]` features; leading axes are batch (the exit trunk
folds its `C` streams into them), and a `frame_mask` `[..., frames, 1]` that is 1 on
an example's valid frames and 0 on the zero padding beyond them. Only the two layers
that mix frames read it: the recurrence and the depthwise convolution see zeros
beyond the valid frames, as an example run alone sees beyond its end, so a padded
batch gives every example the outputs it gets alone.
"""

import functools

import flax.linen as nn
import jax
from jax.ad_checkpoint import checkpoint_name
import jax.numpy as jnp

from eesep_jax.models.config import PressNetConfig

# Range of the recurrence's initial update rates `z = 1 - a`: memories of roughly
# 10 to 1000 frames (5 ms to 0.5 s at stride 4 and 8 kHz).
_GATE_RATE_RANGE = (1e-3, 1e-1)


# What a block's backward pass keeps from its forward pass: the matmuls' outputs and
# the recurrence's states (named so). Everything else is element-wise and is
# recomputed inside the backward pass's own fused loops, which costs less than
# writing it out and reading it back: on CPU a step is bound by memory traffic and by
# the page faults of its temporary buffer, which this shrinks.
_RECURRENCE_STATES = "recurrence_states"
_SAVED_BY_BLOCKS = jax.checkpoint_policies.save_from_both_policies(
  jax.checkpoint_policies.dots_saveable,
  jax.checkpoint_policies.save_only_these_names(_RECURRENCE_STATES),
)

# Frames per chunk of the recurrence's two-level scan: the loop within chunks runs
# this many steps, the loop across chunks `frames / _SCAN_CHUNK`.
_SCAN_CHUNK = 32


def _scan_both_ways(decay, update, forward_first):
  """`h_t = decay_t · h_{t∓1} + update_t` along axis -2 from a zero state, forward in time
  for one half of the channels and backward for the other.

  A two-level scan: a loop over the position within chunks of `_SCAN_CHUNK` frames
  runs every chunk at once from a zero state, keeping each frame's state and the
  product of the decays since the chunk began; a loop over chunks carries the state
  across their boundaries; one element-wise pass adds it in. Against
  `lax.associative_scan` (a tree of strided slices, `log frames` deep) this makes
  fewer passes over memory and a smaller program to compile, and the
  two directions share the loops instead of the second half being flipped in time.

  Args:
    decay, update: `[..., frames, channels]`, `channels` even.
    forward_first: whether the first half of the channels runs forward in time.

  Returns:
    `[..., frames, channels]` states.
  """
  *batch, frames, channels = decay.shape
  half = channels // 2
  num_chunks = -(-frames // _SCAN_CHUNK)
  axis = len(batch) + 1  # Position within a chunk.

  def chunks(x, part):
    """Half `part` (0 or 1), zero-padded at the end: `[..., chunks, _SCAN_CHUNK, half]`."""
    x = x[..., part * half : (part + 1) * half]
    x = jnp.pad(x, [(0, 0)] * len(batch) + [(0, num_chunks * _SCAN_CHUNK - frames), (0, 0)])
    return x.reshape(tuple(batch) + (num_chunks, _SCAN_CHUNK, half))

  parts = (0, 1) if forward_first else (1, 0)  # (forward, backward) halves.
  inputs = [(chunks(decay, part), chunks(update, part)) for part in parts]

  def within_chunks(i, carry):
    result = []
    for (a, u), (h, p, states, products), position in zip(inputs, carry, (i, _SCAN_CHUNK - 1 - i)):
      a_i = jax.lax.dynamic_index_in_dim(a, position, axis, keepdims=False)
      h = a_i * h + jax.lax.dynamic_index_in_dim(u, position, axis, keepdims=False)
      p = a_i * p
      result.append(
        (
          h,
          p,
          jax.lax.dynamic_update_index_in_dim(states, h, position, axis),
          jax.lax.dynamic_update_index_in_dim(products, p, position, axis),
        )
      )
    return result

  zeros = jnp.zeros(tuple(batch) + (num_chunks, half), decay.dtype)
  buffers = jnp.zeros_like(inputs[0][0])
  carry = jax.lax.fori_loop(
    0, _SCAN_CHUNK, within_chunks, [(zeros, jnp.ones_like(zeros), buffers, buffers)] * 2
  )

  def across_chunks(state, chunk):
    h, p = chunk  # The chunk's own final state and decay product.
    return p * state + h, state

  outputs = []
  for (h, p, states, products), reverse in zip(carry, (False, True)):
    _, entering = jax.lax.scan(
      across_chunks,
      zeros[..., 0, :],
      (jnp.moveaxis(h, -2, 0), jnp.moveaxis(p, -2, 0)),
      reverse=reverse,
    )
    outputs.append(states + products * jnp.moveaxis(entering, 0, -2)[..., None, :])
  outputs = jnp.concatenate(outputs if forward_first else outputs[::-1], axis=-1)
  return outputs.reshape(tuple(batch) + (num_chunks * _SCAN_CHUNK, channels))[..., :frames, :]


def _shift_frames(x, offset):
  """`y_t = x_{t + offset}` along axis -2 for `offset` ±1, zero beyond the ends."""
  zero = jnp.zeros_like(x[..., :1, :])
  if offset > 0:
    return jnp.concatenate([x[..., 1:, :], zero], axis=-2)
  return jnp.concatenate([zero, x[..., :-1, :]], axis=-2)


def _shift_halves(x, offset):
  """`_shift_frames` by `offset` on the first half of the channels, `-offset` on the
  second: one frame ahead (+1) or behind (-1) in each half's own direction."""
  half = x.shape[-1] // 2
  return jnp.concatenate(
    [_shift_frames(x[..., :half], offset), _shift_frames(x[..., half:], -offset)], axis=-1
  )


def _associative_scan_both_ways(decay, update, forward_first):
  """What `_scan_both_ways` computes, as `lax.associative_scan`: `log frames` steps
  that each run over every frame at once, which suits accelerators (the paper's
  form); each half of the channels is scanned in its own direction."""
  half = decay.shape[-1] // 2

  def combine(earlier, later):
    (decay_1, update_1), (decay_2, update_2) = earlier, later
    return decay_1 * decay_2, decay_2 * update_1 + update_2

  def scan(part, reverse):
    part = slice(None, half) if part == 0 else slice(half, None)
    return jax.lax.associative_scan(
      combine, (decay[..., part], update[..., part]), reverse=reverse, axis=decay.ndim - 2
    )[1]

  return jnp.concatenate([scan(0, not forward_first), scan(1, forward_first)], axis=-1)


# `PressNetConfig.recurrence_form` -> the scan that runs it.
_RECURRENCE_SCANS = {"chunked": _scan_both_ways, "associative": _associative_scan_both_ways}


def bidirectional_linear_recurrence(decay, update, form="chunked"):
  """`h_t = decay_t · h_{t±1} + update_t` along axis -2, zero initial state: forward in
  time for the first half of the channels, backward for the second half.

  `decay`, `update`, result: `[..., frames, channels]`, `channels` even. `form`, a
  resolved `PressNetConfig.recurrence_form` ("chunked" or "associative"), picks the
  scan; both give the same states. The gradient is one more scan of the same form
  (see `_recurrence_backward`).
  """
  if form not in _RECURRENCE_SCANS:
    raise ValueError(f"recurrence form {form!r} is not one of {tuple(_RECURRENCE_SCANS)}")
  return _recurrence(form, decay, update)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _recurrence(form, decay, update):
  return _RECURRENCE_SCANS[form](decay, update, forward_first=True)


def _recurrence_forward(form, decay, update):
  states = _recurrence(form, decay, update)
  return states, (decay, states)


def _recurrence_backward(form, residuals, cotangent):
  # The adjoint of a linear recurrence is the same recurrence run the other way in
  # time, `λ_t = g_t + decay_{t+1} λ_{t+1}` for a forward one: one more scan instead of
  # differentiating through the loops (a bigger program, and every step's carry saved).
  decay, states = residuals
  adjoint = _RECURRENCE_SCANS[form](_shift_halves(decay, 1), cotangent, forward_first=False)
  return adjoint * _shift_halves(states, -1), adjoint


_recurrence.defvjp(_recurrence_forward, _recurrence_backward)


def _shifted_sum(padded, kernel, frames):
  """`sum_k padded[..., k:k + frames, :] · kernel[k]`: one fused pass over the input."""
  return sum(padded[..., k : k + frames, :] * kernel[k] for k in range(kernel.shape[0]))


def _pad_frames(x, left, right):
  return jnp.pad(x, [(0, 0)] * (x.ndim - 2) + [(left, right), (0, 0)])


def depthwise_convolution(x, kernel, form="shifted"):
  """Depthwise cross-correlation over frames with "SAME" padding, as `nn.Conv` with
  `feature_group_count` equal to the channels computes it.

  Args:
    x: `[..., frames, channels]`.
    kernel: `[K, channels]`.
    form: a resolved `PressNetConfig.depthwise_form`: "shifted" (`_shifted_convolution`,
      for XLA:CPU) or "grouped" (one grouped convolution, for accelerators); both give
      the same outputs and gradients.

  Returns:
    `[..., frames, channels]`.
  """
  if form == "shifted":
    return _shifted_convolution(x, kernel)
  if form == "grouped":
    return _grouped_convolution(x, kernel)
  raise ValueError(f"depthwise form {form!r} is not one of ('shifted', 'grouped')")


def _grouped_convolution(x, kernel):
  """`depthwise_convolution` as one `lax.conv_general_dilated` with a group per channel."""
  size, channels = kernel.shape
  left = (size - 1) // 2
  y = jax.lax.conv_general_dilated(
    x.reshape((-1,) + x.shape[-2:]),
    kernel[:, None, :],
    window_strides=(1,),
    padding=[(left, size - 1 - left)],
    dimension_numbers=("NWC", "WIO", "NWC"),
    feature_group_count=channels,
  )
  return y.reshape(x.shape)


@jax.custom_vjp
def _shifted_convolution(x, kernel):
  """`depthwise_convolution` as shifted multiply-adds.

  XLA:CPU runs grouped convolutions, and above all their kernel gradient (a dense
  `[K, C, C]` convolution whose diagonal is kept), much slower than these shifted
  multiply-adds and the matmul of `_depthwise_kernel_gradient`.
  """
  size = kernel.shape[0]
  left = (size - 1) // 2
  return _shifted_sum(_pad_frames(x, left, size - 1 - left), kernel, x.shape[-2])


def _depthwise_kernel_gradient(x, cotangent, size):
  """`g[k, c] = Σ_{…, t} x_pad[…, t + k, c] · cotangent[…, t, c]` as one batched matmul.

  Frames are cut into blocks of `L ≥ K − 1`; block `j` of the cotangent meets the
  `L + K − 1` padded input frames from `j·L` on, and `P[c, s, u]` (their products
  summed over blocks) holds every lag `u − s`. Lag `k` is the skewed diagonal
  `P[c, s, s + k]`, which a reshape of the flattened `[L, U]` plane to
  `[L, U + 1]` lines up as column `k`. K shifted reductions instead would read both
  arrays K times.
  """
  channels, frames = x.shape[-1], x.shape[-2]
  left = (size - 1) // 2
  block = max(size - 1, 64)
  num_blocks = -(-frames // block)
  window = block + size - 1
  x = _pad_frames(x, left, (num_blocks + 1) * block - frames - left).reshape(
    (-1, num_blocks + 1, block, channels)
  )
  windows = jnp.concatenate([x[:, :-1], x[:, 1:, : size - 1]], axis=2)  # [N, J, U, C]
  cotangent = _pad_frames(cotangent, 0, num_blocks * block - frames).reshape(
    (-1, num_blocks, block, channels)
  )
  products = jnp.einsum(
    "njsc,njuc->csu", cotangent, windows, preferred_element_type=jnp.float32
  )  # [C, L, U]
  skewed = jnp.pad(products.reshape(channels, block * window), ((0, 0), (0, block)))
  return skewed.reshape(channels, block, window + 1)[..., :size].sum(axis=1).T


def _depthwise_convolution_forward(x, kernel):
  return _shifted_convolution(x, kernel), (x, kernel)


def _depthwise_convolution_backward(residuals, cotangent):
  x, kernel = residuals
  size = kernel.shape[0]
  left = (size - 1) // 2
  # The input's gradient is the same correlation with the kernel reversed.
  x_gradient = _shifted_sum(
    _pad_frames(cotangent, size - 1 - left, left), kernel[::-1], x.shape[-2]
  )
  return x_gradient, _depthwise_kernel_gradient(x, cotangent, size).astype(kernel.dtype)


_shifted_convolution.defvjp(_depthwise_convolution_forward, _depthwise_convolution_backward)


def _gate_bias_init(key, shape, dtype=jnp.float32):
  """Biases whose `sigmoid` is log-uniform over `_GATE_RATE_RANGE`."""
  low, high = jnp.log(jnp.asarray(_GATE_RATE_RANGE))
  rate = jnp.exp(jax.random.uniform(key, shape, jnp.float32, low, high))
  return (jnp.log(rate) - jnp.log1p(-rate)).astype(dtype)


class LayerScale(nn.Module):
  """Per-channel learned scale of a residual branch, initialised at `init_value`
  (`PressNetConfig.layer_scale_init`)."""

  init_value: float

  @nn.compact
  def __call__(self, x):
    scale = self.param("scale", nn.initializers.constant(self.init_value), (x.shape[-1],))
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
  def __call__(self, x, frame_mask):
    cfg = self.config
    hidden = 2 * cfg.rnn_expansion * cfg.width  # Both directions.
    dense = functools.partial(nn.Dense, dtype=cfg.compute_dtype, param_dtype=jnp.float32)
    logits = dense(hidden, bias_init=_gate_bias_init, name="gate")(x)
    values = dense(hidden, name="value")(x)
    output_gate = nn.gelu(dense(hidden, name="output_gate")(x))
    # The scan runs in float32 whatever the compute dtype: products of many decays
    # lose everything in bfloat16.
    rate = jax.nn.sigmoid(logits.astype(jnp.float32))
    # No update on padded frames: the backward direction then enters the valid frames
    # from a zero state, as it does at the end of an example run alone.
    update = rate * values.astype(jnp.float32) * frame_mask
    states = checkpoint_name(
      bidirectional_linear_recurrence(1.0 - rate, update, cfg.resolved_recurrence_form),
      _RECURRENCE_STATES,
    )
    states = states.astype(cfg.compute_dtype)
    return dense(cfg.width, name="output")(states * output_gate)


class DepthwiseConv(nn.Module):
  """`depthwise_convolution` plus a bias, with the parameters `nn.Conv(C, (K,),
  padding="SAME", feature_group_count=C)` has: `kernel` `[K, 1, C]`, `bias` `[C]`.

  `[..., frames, C] -> [..., frames, C]`; `form` as `depthwise_convolution` takes it.
  """

  kernel_size: int
  form: str = "shifted"
  dtype: jnp.dtype | None = None
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    channels = x.shape[-1]
    kernel = self.param(
      "kernel", nn.initializers.lecun_normal(), (self.kernel_size, 1, channels), self.param_dtype
    )
    bias = self.param("bias", nn.initializers.zeros_init(), (channels,), self.param_dtype)
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    return depthwise_convolution(x, kernel[:, 0], self.form) + bias


class DepthwiseConvolution(nn.Module):
  """GLU -> long depthwise convolution over frames -> SiLU -> projection.

  `[..., frames, width] -> [..., frames, width]`.
  """

  config: PressNetConfig

  @nn.compact
  def __call__(self, x, frame_mask):
    cfg = self.config
    channels = cfg.conv_expansion * cfg.width
    kwargs = dict(dtype=cfg.compute_dtype, param_dtype=jnp.float32)
    # Zeros on padded frames, as the convolution's own "SAME" padding beyond the end.
    y = nn.glu(nn.Dense(2 * channels, **kwargs)(x)) * frame_mask.astype(x.dtype)
    # Named as the `nn.Conv` it stands in for, whose parameters it keeps.
    y = nn.silu(
      DepthwiseConv(cfg.conv_kernel, cfg.resolved_depthwise_form, name="Conv_0", **kwargs)(y)
    )
    return nn.Dense(cfg.width, **kwargs)(y)


class FeedForward(nn.Module):
  """Gated feed-forward layer (GEGLU). `[..., width] -> [..., width]`."""

  config: PressNetConfig

  @nn.compact
  def __call__(self, x, frame_mask):
    del frame_mask  # Frame by frame: padding cannot reach the valid frames.
    cfg = self.config
    kwargs = dict(dtype=cfg.compute_dtype, param_dtype=jnp.float32)
    value, gate = jnp.split(nn.Dense(2 * cfg.ffn_expansion * cfg.width, **kwargs)(x), 2, axis=-1)
    return nn.Dense(cfg.width, **kwargs)(value * nn.gelu(gate))


class Block(nn.Module):
  """Recurrence, depthwise convolution and feed-forward layer, each as
  `x + LayerScale(Dropout(layer(RMSNorm(x))))`.

  `__call__(x, frame_mask, train) -> (x, None)` so that `nn.scan` can stack blocks;
  `x`: `[..., frames, width]`, `frame_mask`: `[..., frames, 1]`.
  """

  config: PressNetConfig

  @nn.compact
  def __call__(self, x, frame_mask, train):
    cfg = self.config
    for layer in (BidirectionalRecurrence, DepthwiseConvolution, FeedForward):
      y = layer(cfg)(nn.RMSNorm(dtype=cfg.compute_dtype, param_dtype=jnp.float32)(x), frame_mask)
      y = nn.Dropout(cfg.dropout, deterministic=not train)(y)
      x = x + LayerScale(cfg.layer_scale_init)(y)
    return x, None


class BlockStack(nn.Module):
  """`num_blocks` blocks of identical shape, stacked with `nn.scan` so that compile
  time does not grow with depth; parameters under `blocks` gain a leading
  `[num_blocks]` axis. `(x [..., frames, width], frame_mask [..., frames, 1], train)
  -> [..., frames, width]`.

  The backward pass keeps only what `_SAVED_BY_BLOCKS` names of each block's forward
  pass, or nothing but the block's input with `remat`.
  """

  config: PressNetConfig
  num_blocks: int
  remat: bool = False

  @nn.compact
  def __call__(self, x, frame_mask, train):
    if self.num_blocks == 0:
      return x
    block = nn.remat(
      Block, static_argnums=(3,), prevent_cse=False, policy=None if self.remat else _SAVED_BY_BLOCKS
    )
    blocks = nn.scan(
      block,
      variable_axes={"params": 0},
      split_rngs={"params": True, "dropout": True},
      in_axes=(nn.broadcast, nn.broadcast),
      length=self.num_blocks,
      unroll=self.config.unroll_blocks,
    )
    return blocks(self.config, name="blocks")(x, frame_mask, train)[0]
