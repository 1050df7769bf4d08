"""PRESS-Net: a separation network with an exit, and a variance head, after every stage.

    mixture [batch, time]
      -> Encoder: Conv1D(kernel K, stride S) -> GELU (the "basis" the decoders mask)
                  -> RMSNorm -> Dense(D)                        [batch, frames, D]
      -> shared trunk: N_enc blocks                             [batch, frames, D]
      -> speaker split: Dense(C·D)                              [batch, C, frames, D]
      -> E stages, each: N_dec/E blocks (streams folded into batch), speaker attention
         across the C streams at every frame, then its exit:
           decoder head:  mask on the basis -> transposed conv  [batch, C, time]
           variance head: -> probabilistic.variance_parameters  [batch, C, blocks] each

Training runs all E stages with one `nn.scan` (parameters under `params["stages"]`,
stacked on a leading `[E]` axis). The stopping loop (`eesep_jax.inference`) runs the
same parameters one stage at a time: `PressNet.encode`, then `apply_stage` on
`stage_params(variables, k)`.

Every entry point takes optional valid `lengths` `[batch]` (samples): a batch of
examples zero-padded to one length then gives each example the estimates, variances
and probabilities it gets when run alone at its own length (see `frame_mask`), so
utterances of many lengths can share one compiled program.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from eesep_jax.core import probabilistic
from eesep_jax.models.config import PressNetConfig
from eesep_jax.models.layers import BlockStack
from eesep_jax.models.layers import LayerScale
from eesep_jax.models.layers import Snake

# Name of the scanned stages in `variables["params"]`.
STAGES = "stages"


def _num_frames(time, config):
  """Frames of the encoder for `time` samples: an int, or an int array for an array."""
  kernel, stride = config.encoder_kernel, config.encoder_stride
  excess = time + 2 * (kernel - stride) - kernel
  excess = excess * (excess > 0)  # max(excess, 0), for ints and arrays alike.
  return -(-excess // stride) + 1


def frame_layout(time, config):
  """`(left_pad, right_pad, frames)` of the encoder for `time` samples.

  The mixture is padded by `K - S` on the left and at least that much on the right so
  that every sample is covered by `K / S` frames and any length works; the decoders'
  transposed convolutions then return `left_pad + time + right_pad` samples, which
  are cropped back to `time`.
  """
  kernel, stride = config.encoder_kernel, config.encoder_stride
  left = kernel - stride
  frames = _num_frames(time, config)
  right = (frames - 1) * stride + kernel - left - time
  return left, right, frames


def valid_lengths(lengths, batch, time):
  """`lengths` as int32 `[batch]`, or `time` for every example when None."""
  if lengths is None:
    return jnp.full((batch,), time, jnp.int32)
  return jnp.broadcast_to(jnp.asarray(lengths, jnp.int32), (batch,))


def frame_mask(lengths, frames, config):
  """`[batch, frames, 1]` float32: 1 on the frames an example of `lengths` `[batch]`
  samples has when run alone (`frame_layout(length)`), 0 on those padding adds."""
  own_frames = _num_frames(lengths, config)
  return (jnp.arange(frames) < own_frames[:, None]).astype(jnp.float32)[..., None]


def _pooling_weights(lengths, time, frames, config):
  """`[batch, frames, blocks]` weights that average each variance block's frames.

  A frame belongs to the block of the sample at its centre; the blocks are those of
  `probabilistic.num_variance_blocks(time)` (the whole signal when `block_length` is
  None). Each example pools only its own frames into its own blocks (frames beyond
  its last block join that block, as they do when it runs alone); blocks that lie
  wholly in its padding get no frames.
  """
  num_blocks = probabilistic.num_variance_blocks(time, config.variance)
  left = config.encoder_kernel - config.encoder_stride
  centres = np.arange(frames) * config.encoder_stride + config.encoder_kernel / 2 - left
  if config.variance.block_length is None:
    block = jnp.zeros((lengths.shape[0], frames), jnp.int32)
  else:
    length = config.variance.block_length
    own_blocks = jnp.maximum((lengths + length - 1) // length, 1)
    block = jnp.minimum(
      np.floor(centres / length).clip(0).astype(np.int32)[None], own_blocks[:, None] - 1
    )
  membership = jax.nn.one_hot(block, num_blocks) * frame_mask(lengths, frames, config)
  return membership / jnp.maximum(membership.sum(axis=1, keepdims=True), 1.0)


def initial_variance_state(config, batch, time):
  """The variance head's running sums before the first exit, for `batch` mixtures of
  `time` samples (`probabilistic.init_variance_state` over `[batch, C]` and the
  signal's variance blocks)."""
  return probabilistic.init_variance_state(
    (batch, config.num_sources),
    probabilistic.num_variance_blocks(time, config.variance),
    config.variance,
  )


def _dense(config, features, **kwargs):
  return nn.Dense(features, dtype=config.compute_dtype, param_dtype=jnp.float32, **kwargs)


def _norm(config):
  return nn.RMSNorm(dtype=config.compute_dtype, param_dtype=jnp.float32)


class Encoder(nn.Module):
  """`[batch, time]` mixture -> (features `[batch, frames, D]`,
  basis activations `[batch, frames, encoder_features]`)."""

  config: PressNetConfig

  @nn.compact
  def __call__(self, mixture):
    cfg = self.config
    left, right, _ = frame_layout(mixture.shape[-1], cfg)
    x = jnp.pad(mixture, ((0, 0), (left, right)))[..., None].astype(cfg.compute_dtype)
    basis = nn.gelu(
      nn.Conv(
        cfg.encoder_features,
        (cfg.encoder_kernel,),
        strides=(cfg.encoder_stride,),
        padding="VALID",
        use_bias=False,
        dtype=cfg.compute_dtype,
        param_dtype=jnp.float32,
      )(x)
    )
    return _dense(cfg, cfg.width)(_norm(cfg)(basis)), basis


class SpeakerAttention(nn.Module):
  """Multi-head attention across the `C` streams at every frame, as a pre-norm
  residual with LayerScale. `[batch, C, frames, D] -> [batch, C, frames, D]`."""

  config: PressNetConfig

  @nn.compact
  def __call__(self, streams, train):
    cfg = self.config
    x = jnp.swapaxes(streams, 1, 2)  # Attend over the sources axis.
    y = nn.MultiHeadDotProductAttention(
      cfg.num_heads, dtype=cfg.compute_dtype, param_dtype=jnp.float32
    )(_norm(cfg)(x))
    y = nn.Dropout(cfg.dropout, deterministic=not train)(y)
    return jnp.swapaxes(x + LayerScale(cfg.layer_scale_init)(y), 1, 2)


class TransposedConvolution(nn.Module):
  """A strided transposed convolution to one channel, as `nn.ConvTranspose(1, (K,),
  strides=(S,), padding="VALID", use_bias=False)` computes it and with its `kernel`
  `[K, features, 1]`, written as a matmul and an overlap-add: XLA:CPU runs the
  transposed convolution, and above all its kernel gradient, much slower.

  `[..., frames, features] -> [..., (frames - 1)·S + K]`; needs `S` to divide `K`.
  """

  kernel_size: int
  stride: int
  dtype: jnp.dtype | None = None
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, frames):
    size, stride = self.kernel_size, self.stride
    kernel = self.param(
      "kernel", nn.initializers.lecun_normal(), (size, frames.shape[-1], 1), self.param_dtype
    )
    frames, kernel = nn.dtypes.promote_dtype(frames, kernel, dtype=self.dtype)
    # Frame `f` adds `segments[f, i]` at sample `f·S + i`; `nn.ConvTranspose` does not
    # flip its kernel, so segment sample `i` takes kernel tap `K − 1 − i`.
    segments = frames @ kernel[::-1, :, 0].T  # [..., frames, K]
    hops = size // stride
    segments = segments.reshape(segments.shape[:-1] + (hops, stride))
    pad = [(0, 0)] * (segments.ndim - 3)
    output = sum(
      jnp.pad(segments[..., m, :], pad + [(m, hops - 1 - m), (0, 0)]) for m in range(hops)
    )  # [..., frames + hops - 1, S]
    return output.reshape(output.shape[:-2] + (-1,))


class DecoderHead(nn.Module):
  """Masks the encoder's basis activations per stream (TasNet style) and maps them
  back to waveforms with a transposed convolution matching the encoder.

  features `[batch, C, frames, D]`, basis `[batch, frames, encoder_features]`
  -> float32 estimates `[batch, C, time]`. Frames beyond an example's own reach
  only samples beyond its length, which the caller zeroes.
  """

  config: PressNetConfig

  @nn.compact
  def __call__(self, features, basis, time):
    cfg = self.config
    mask = nn.relu(_dense(cfg, cfg.encoder_features)(_norm(cfg)(features)))
    # Named as the `nn.ConvTranspose` it stands in for, whose parameters it keeps.
    waveforms = TransposedConvolution(
      cfg.encoder_kernel,
      cfg.encoder_stride,
      dtype=cfg.compute_dtype,
      param_dtype=jnp.float32,
      name="ConvTranspose_0",
    )(mask * basis[:, None])
    left = frame_layout(time, cfg)[0]
    return waveforms[..., left : left + time].astype(jnp.float32)


class VarianceHead(nn.Module):
  """GLU on every frame -> mean over each variance block's frames -> Snake -> Dense.

  features `[batch, C, frames, D]`, pooling `[batch, frames, blocks]`
  -> float32 raw outputs `[batch, C, blocks, probabilistic.num_raw_outputs]`.
  """

  config: PressNetConfig

  @nn.compact
  def __call__(self, features, pooling):
    cfg = self.config
    x = nn.glu(_dense(cfg, 2 * cfg.width)(_norm(cfg)(features)))
    x = jnp.einsum("ncfd,nfb->ncbd", x, pooling.astype(x.dtype))
    x = Snake()(x).astype(jnp.float32)
    return nn.Dense(probabilistic.num_raw_outputs(cfg.variance))(x)


def stage_trunk(config, features, mask, train):
  """A stage's blocks (the `C` streams folded into the batch) and its speaker attention.

  Call it inside a compact method: it creates the submodules `trunk` and
  `speaker_attention` there. `features` `[batch, C, frames, D]` and `mask`
  `[batch, frames, 1]` (`frame_mask`) -> `[batch, C, frames, D]`.
  """
  batch, sources, frames, width = features.shape
  streams = BlockStack(config, config.blocks_per_stage, name="trunk")(
    features.reshape(batch * sources, frames, width), jnp.repeat(mask, sources, axis=0), train
  )
  streams = streams.reshape(batch, sources, frames, width)
  return SpeakerAttention(config, name="speaker_attention")(streams, train)


def stage_exit(config, features, basis, lengths, variance_state, mixture_length):
  """An exit: the decoder head's estimates and the variance head's parameters.

  Call it inside a compact method: it creates the submodules `decoder` and
  `variance_head` there.

  Args:
    config: the `PressNetConfig`.
    features: `[batch, C, frames, D]`, the stage's output.
    basis: `[batch, frames, F]`, the encoder's basis activations.
    lengths: `[batch]` int32 valid samples of each example.
    variance_state: `initial_variance_state` running sums.
    mixture_length: `time`, the number of samples of the mixture.

  Returns:
    `(variance_state, exit_output)`, exit_output being
    `{"estimates": [batch, C, time], "variance": {name: [batch, C, blocks]}}`;
    estimates are zero beyond each example's length.
  """
  frames = features.shape[2]
  estimates = DecoderHead(config, name="decoder")(features, basis, mixture_length)
  estimates = estimates * (jnp.arange(mixture_length) < lengths[:, None])[:, None]
  raw = VarianceHead(config, name="variance_head")(
    features, _pooling_weights(lengths, mixture_length, frames, config)
  )
  # P(ŝ) only sets the scale of the predicted variance: the likelihood must not
  # move the estimate's power to change its own variance (and `mean_loss="snr"`
  # relies on the NLL not reaching the estimate at all).
  variance, variance_state = probabilistic.variance_parameters(
    raw, jax.lax.stop_gradient(estimates), variance_state, config.variance, lengths=lengths[:, None]
  )
  return variance_state, {"estimates": estimates, "variance": variance}


class Stage(nn.Module):
  """One stage of the exit trunk followed by its exit; the body of the stage scan.

  `__call__((carry, variance_state), mixture_length, train)` returns
  `((carry, variance_state), exit_output)` with
    carry: `{"features": [batch, C, frames, D], "basis": [batch, frames, F],
      "lengths": [batch]}` (`basis` and `lengths` pass through unchanged: every exit
      masks the same activations);
    variance_state: `initial_variance_state` running sums;
    exit_output: `{"estimates": [batch, C, time], "variance": {name: [batch, C, blocks]}}`.
  """

  config: PressNetConfig

  @nn.compact
  def __call__(self, state, mixture_length, train):
    carry, variance_state = state
    mask = frame_mask(carry["lengths"], carry["features"].shape[2], self.config)
    streams = stage_trunk(self.config, carry["features"], mask, train)
    variance_state, exit_output = stage_exit(
      self.config, streams, carry["basis"], carry["lengths"], variance_state, mixture_length
    )
    return ({**carry, "features": streams}, variance_state), exit_output


class PressNet(nn.Module):
  """PRESS-Net (see the module docstring).

  `PressNet(config).apply(variables, mixture, train=False, lengths=None,
  rngs={"dropout": key})` with `mixture` `[batch, time]` and optional valid `lengths`
  `[batch]` returns
  `{"estimates": [exits, batch, C, time], "variance": {name: [exits, batch, C, blocks]}}`.
  """

  config: PressNetConfig

  def setup(self):
    cfg = self.config
    self.encoder = Encoder(cfg)
    self.shared = BlockStack(cfg, cfg.num_shared_blocks, remat=cfg.remat)
    self.split = _dense(cfg, cfg.num_sources * cfg.width)
    stage = nn.remat(Stage, static_argnums=(2, 3), prevent_cse=False) if cfg.remat else Stage
    self.stages = nn.scan(
      stage,
      variable_axes={"params": 0},
      split_rngs={"params": True, "dropout": True},
      in_axes=(nn.broadcast, nn.broadcast),
      length=cfg.num_exits,
    )(cfg, name=STAGES)

  def encode(self, mixture, train=False, lengths=None):
    """Encoder, shared trunk and speaker split: the carry entering stage 1.

    `mixture` `[batch, time]`, optional valid `lengths` `[batch]` -> `{"features":
    [batch, C, frames, D], "basis": [batch, frames, F], "lengths": [batch]}`.
    """
    cfg = self.config
    batch, time = mixture.shape
    lengths = valid_lengths(lengths, batch, time)
    # What lies beyond an example's length is not its signal, whatever the caller left.
    mixture = mixture * (jnp.arange(time) < lengths[:, None]).astype(mixture.dtype)
    features, basis = self.encoder(mixture)
    mask = frame_mask(lengths, features.shape[1], cfg)
    features = self.shared(features, mask, train)
    frames = features.shape[1]
    # The split's bias is the learned per-source embedding.
    streams = self.split(features).reshape(batch, frames, cfg.num_sources, cfg.width)
    return {"features": jnp.swapaxes(streams, 1, 2), "basis": basis, "lengths": lengths}

  def __call__(self, mixture, train=False, lengths=None):
    cfg = self.config
    batch, time = mixture.shape
    variance_state = initial_variance_state(cfg, batch, time)
    _, outputs = self.stages((self.encode(mixture, train, lengths), variance_state), time, train)
    return outputs


def stage_params(variables, k):
  """Stage `k`'s parameters (0-based; may be traced) sliced out of
  `variables["params"]["stages"]`, where `nn.scan` stacks them on axis 0."""
  return jax.tree.map(
    lambda p: jax.lax.dynamic_index_in_dim(p, k, axis=0, keepdims=False),
    variables["params"][STAGES],
  )


def apply_stage(config, stage_params, carry, mixture_length, variance_state):
  """Applies one stage and its exit (inference: no dropout).

  Args:
    config: the `PressNetConfig`.
    stage_params: one stage's parameters, e.g. `stage_params(variables, k)`.
    carry: `PressNet.encode`'s output, or the carry the previous stage returned.
    mixture_length: `time`, the number of samples of the mixture.
    variance_state: `initial_variance_state(...)` or the previous stage's.

  Returns:
    `(carry, variance_state, exit_output)`, exit_output being
    `{"estimates": [batch, C, time], "variance": {name: [batch, C, blocks]}}`, equal
    to slice `k` of the training forward's outputs.
  """
  (carry, variance_state), exit_output = Stage(config).apply(
    {"params": stage_params}, (carry, variance_state), mixture_length, False
  )
  return carry, variance_state, exit_output
