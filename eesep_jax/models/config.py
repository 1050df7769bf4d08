"""`PressNetConfig`, the hyper-parameters of PRESS-Net, and its named presets."""

from collections.abc import Mapping
import dataclasses

import jax
import jax.numpy as jnp

from eesep_jax.core import probabilistic

DTYPES = ("float32", "bfloat16")
# How the layers run (same outputs and gradients, different programs): "auto" picks the
# first named form on CPU and the second on GPU and TPU (`jax.default_backend()`).
RECURRENCE_FORMS = ("auto", "chunked", "associative")
DEPTHWISE_FORMS = ("auto", "shifted", "grouped")


@dataclasses.dataclass(frozen=True)
class PressNetConfig:
  """PRESS-Net hyper-parameters (frozen, so hashable and usable as a static argument).

  Attributes:
    sample_rate: audio sample rate in Hz; compute is quoted per second at this rate.
    num_sources: `C`, the number of separated streams and outputs.
    width: `D`, the feature width of every block.
    num_shared_blocks: `N_enc`, blocks over the mixture before the speaker split.
    num_exit_blocks: `N_dec`, blocks over the `C` streams, cut into `num_exits` stages.
    num_exits: `E`, the number of stages; an exit follows each.
    encoder_kernel: kernel of the encoder's convolution (and the decoders' transposed
      convolutions), in samples.
    encoder_stride: its stride, in samples; one frame per `encoder_stride` samples.
    encoder_features: number of basis functions of the encoder's convolution, which
      the decoder heads mask.
    rnn_expansion: hidden channels of each direction of the recurrence, per `width`.
    conv_expansion: channels of the depthwise convolution, per `width`.
    ffn_expansion: hidden channels of the gated feed-forward layer, per `width`.
    conv_kernel: kernel of the long depthwise convolution, in frames.
    num_heads: heads of the speaker attention (must divide `width`).
    dropout: dropout rate on every residual sub-layer's output (training only).
    layer_scale_init: initial LayerScale of every residual branch. The reported
      networks use 1e-5: a deep stack then starts as the identity and trains stably.
      A shallow network trained for minutes learns faster from a larger value.
    remat: recompute activations in the backward pass, per stage and per shared block.
    unroll_blocks: unroll the scans over blocks (bigger programs; also what lets
      XLA's cost analysis count every block, see `gmacs_by_exit`).
    dtype: compute dtype, "float32" or "bfloat16"; parameters stay float32.
    recurrence_form: how the linear recurrence runs (`RECURRENCE_FORMS`): "chunked",
      a two-level loop of few passes over memory, fast on XLA:CPU; "associative",
      `lax.associative_scan`, `log frames` parallel steps for accelerators; "auto"
      picks by backend (`resolved_recurrence_form`).
    depthwise_form: how the depthwise convolution runs (`DEPTHWISE_FORMS`):
      "shifted", multiply-adds of shifted frames and a matmul for the kernel's
      gradient, fast on XLA:CPU; "grouped", one grouped convolution
      (`feature_group_count`), which accelerators run natively; "auto" picks by
      backend (`resolved_depthwise_form`).
    variance: the variance head's parameterisation (`probabilistic.VarianceConfig`);
      a mapping is converted.
  """

  sample_rate: int = 8000
  num_sources: int = 2
  width: int = 64
  num_shared_blocks: int = 8
  num_exit_blocks: int = 12
  num_exits: int = 4
  encoder_kernel: int = 16
  encoder_stride: int = 4
  encoder_features: int = 256
  rnn_expansion: int = 2
  conv_expansion: int = 2
  ffn_expansion: int = 5
  conv_kernel: int = 65
  num_heads: int = 4
  dropout: float = 0.0
  layer_scale_init: float = 1e-5
  remat: bool = False
  unroll_blocks: bool = False
  dtype: str = "float32"
  recurrence_form: str = "auto"
  depthwise_form: str = "auto"
  variance: probabilistic.VarianceConfig = dataclasses.field(
    default_factory=probabilistic.VarianceConfig
  )

  def __post_init__(self):
    if isinstance(self.variance, Mapping):
      object.__setattr__(self, "variance", probabilistic.VarianceConfig(**self.variance))
    if self.num_exits < 1 or self.num_exit_blocks % self.num_exits:
      raise ValueError(
        f"num_exit_blocks={self.num_exit_blocks} must be a positive multiple of "
        f"num_exits={self.num_exits}: every stage has the same number of blocks"
      )
    if self.num_exit_blocks < self.num_exits:
      raise ValueError(
        f"every stage needs a block: num_exit_blocks={self.num_exit_blocks} "
        f"< num_exits={self.num_exits}"
      )
    if self.width % self.num_heads:
      raise ValueError(f"num_heads={self.num_heads} must divide width={self.width}")
    if self.encoder_kernel % self.encoder_stride:
      raise ValueError(
        f"encoder_stride={self.encoder_stride} must divide encoder_kernel={self.encoder_kernel}"
      )
    if self.dtype not in DTYPES:
      raise ValueError(f"dtype={self.dtype!r} is not one of {DTYPES}")
    if self.recurrence_form not in RECURRENCE_FORMS:
      raise ValueError(f"recurrence_form={self.recurrence_form!r} is not one of {RECURRENCE_FORMS}")
    if self.depthwise_form not in DEPTHWISE_FORMS:
      raise ValueError(f"depthwise_form={self.depthwise_form!r} is not one of {DEPTHWISE_FORMS}")
    if not 0.0 <= self.dropout < 1.0:
      raise ValueError(f"dropout={self.dropout} must lie in [0, 1)")

  @property
  def blocks_per_stage(self):
    return self.num_exit_blocks // self.num_exits

  @property
  def compute_dtype(self):
    return jnp.dtype(self.dtype)

  @property
  def resolved_recurrence_form(self):
    """`recurrence_form`, with "auto" resolved for the default backend."""
    return _resolve(self.recurrence_form, RECURRENCE_FORMS)

  @property
  def resolved_depthwise_form(self):
    """`depthwise_form`, with "auto" resolved for the default backend."""
    return _resolve(self.depthwise_form, DEPTHWISE_FORMS)

  def with_cpu_forms(self):
    """This config with the CPU forms of the layers, e.g. to count FLOPs the same way on
    every machine."""
    return dataclasses.replace(
      self, recurrence_form=RECURRENCE_FORMS[1], depthwise_form=DEPTHWISE_FORMS[1]
    )

  def to_dict(self):
    """Plain nested dict (the variance config as a dict), e.g. for `ml_collections`."""
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, fields):
    """Inverse of `to_dict`; also takes anything with a `to_dict()` (a `ConfigDict`)."""
    if hasattr(fields, "to_dict"):
      fields = fields.to_dict()
    return cls(**fields)


def _resolve(form, forms):
  """`form`, or for "auto" the CPU form (`forms[1]`) on CPU and the accelerator form
  (`forms[2]`) on GPU and TPU."""
  if form != "auto":
    return form
  return forms[1] if jax.default_backend() == "cpu" else forms[2]


PRESETS = {
  # Minutes on 2 CPU cores: what the demo and the tests train.
  "tiny": PressNetConfig(
    width=32,
    num_shared_blocks=1,
    num_exit_blocks=3,
    num_exits=3,
    encoder_features=64,
    rnn_expansion=1,
    conv_expansion=1,
    ffn_expansion=2,
    conv_kernel=15,
    num_heads=2,
  ),
  # The reported S and M networks (ARCHITECTURE.md): 3.4 M / 11.3 GMAC/s and
  # 22.4 M / 79.7 GMAC/s at the last exit.
  "press-4": PressNetConfig(width=64, num_shared_blocks=8, num_exit_blocks=12, num_exits=4),
  "press-12": PressNetConfig(
    width=128,
    num_shared_blocks=4,
    num_exit_blocks=24,
    num_exits=12,
    encoder_features=512,
    ffn_expansion=6,
  ),
}


def preset(name, **overrides):
  """The named preset with `overrides` replaced, e.g. `preset("tiny", num_sources=3)`."""
  if name not in PRESETS:
    raise ValueError(f"unknown preset {name!r}; presets are {sorted(PRESETS)}")
  return dataclasses.replace(PRESETS[name], **overrides)
