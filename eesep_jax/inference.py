"""Inference that stops: a `lax.while_loop` over stages (docs/method.md §7).

The loop runs stage `k` and its exit head, evaluates the stopping policy, freezes the
examples that stop, and ends once every example has stopped or the last stage ran.
Stage `k`'s parameters are sliced out of the same stacked tree that training uses, so
`variables` is exactly what `PressNet(config).init` returns.

Compute is accounted from XLA's cost analysis of the encoder and of one stage (see
`models.gmacs_by_exit`), summed along the path each example actually took: the
loop body is counted once by XLA, so a cost analysis of the whole loop would be wrong.

`separate_long` runs the loop on a signal of any length, in overlapping chunks of one
shape that are matched and cross-faded back together.
"""

import dataclasses
import functools
import os

import flax
import jax
import jax.numpy as jnp
import numpy as np

from eesep_jax import models
from eesep_jax.core import metrics
from eesep_jax.core import permutation
from eesep_jax.core import probabilistic
from eesep_jax.core import stopping
from eesep_jax.data import mixing

# The training segments' length (`config_lib.base_config`): the network and its variance
# head see chunks like those they learned from.
CHUNK_SECONDS = 4.0
OVERLAP_SECONDS = 0.5
CHUNK_BATCH = 8
# The level the network sees every input at: the peak its training mixtures have
# (WSJ0-2mix and the embedded corpus scale each utterance's mixture to it).
INPUT_PEAK = mixing.PEAK
# A chunk shorter than this many encoder kernels gives the network next to no frames
# to separate; an overlap shorter than this many gives the chunks' alignment nothing.
MIN_CHUNK_KERNELS = 8
MIN_OVERLAP_KERNELS = 2
# What one chunk costs in memory per encoder frame, in floats per feature channel and
# source: the blocks' widest hidden layer, kept a few times over by XLA (measured on
# the press-4 preset, rounded up). Chunks whose batch would need more than
# `MEMORY_SHARE` of the device's memory are refused.
FLOATS_PER_FRAME_CHANNEL = 24
MEMORY_SHARE = 0.5


@flax.struct.dataclass
class SeparationResult:
  """What `separate` returns.

  Attributes:
    estimates: `[batch, sources, time]`, each example's output at its own exit.
    exit_index: `[batch]` int32, the 1-based exit each example stopped at.
    probability: `[batch]`, the exit probability `P(SNR ≥ γ)` (combined over
      conditions and sources) at that exit, whatever the policy.
    gmacs: `[batch]`, giga multiply-accumulates spent on that example.
  """

  estimates: jax.Array
  exit_index: jax.Array
  probability: jax.Array
  gmacs: jax.Array


def oracle_snr(references, estimates):
  """Worst-source SNR under the best permutation: `[batch, sources, time] -> [batch]`,
  what the oracle policy and "reached the target" judge by."""
  return permutation.worst_source(metrics.snr(references[:, None, :, :], estimates[:, :, None, :]))


def _stopping_inputs(
  policy, exit_output, *, mixture, references, reference_power, lengths, config, exact
):
  """What `stopping.accepts` reads for `policy` at one exit: `(probability [batch],
  keywords)`. The probability is always computed: `SeparationResult` reports it."""
  probability = probabilistic.exit_probability(
    exit_output["estimates"],
    exit_output["variance"],
    policy.target_snr_db,
    conditions=policy.conditions,
    mixture=mixture,
    reference_power=reference_power,
    config=config.variance,
    exact=exact,
    lengths=lengths,
  )
  inputs = {"probability": probability}
  if policy.kind == "expected-snr":
    inputs["expected_snr_db"] = jnp.min(
      probabilistic.expected_snr_db(
        exit_output["estimates"], exit_output["variance"], config.variance, lengths=lengths[:, None]
      ),
      axis=-1,
    )
  if policy.kind == "oracle":
    inputs["oracle_snr_db"] = oracle_snr(references, exit_output["estimates"])
  return probability, inputs


def input_gains(mixture, lengths):
  """`[batch]` gains that bring each example of `mixture` `[batch, time]` (its first
  `lengths` samples) to the peak `INPUT_PEAK` the network was trained at; 1 for a
  silent one.

  The network is not linear in its input's level: fed as it comes, a quiet recording
  separates worse than a loud one. Fed at one level, and its estimates scaled back,
  separation does not depend on the level, up to float rounding.
  """
  valid = jnp.arange(mixture.shape[-1]) < lengths[:, None]
  peak = jnp.max(jnp.where(valid, jnp.abs(mixture), 0.0), axis=-1)
  return _peak_gains(peak, jnp)


def _peak_gains(peak, xp):
  """The gains that bring signals of peak `peak` to `INPUT_PEAK`, in `xp` (numpy or
  jax.numpy); 1 for silence."""
  return xp.where(peak > 0.0, INPUT_PEAK / xp.where(peak > 0.0, peak, 1.0), 1.0)


def training_level(mixture, *others):
  """`(gain, mixture, *others)`: one signal `mixture` `[time]` brought to the training
  level (`input_gains`), and `others` (its references, say) scaled by the same gain.

  On the host, in numpy: JAX's eager operations would compile anew for every length of
  signal, which made evaluating utterances of many lengths several times slower.
  """
  mixture = np.asarray(mixture, np.float32)
  gain = float(_peak_gains(np.max(np.abs(mixture), initial=0.0), np))
  return (
    gain,
    mixture * np.float32(gain),
    *(np.asarray(other, np.float32) * np.float32(gain) for other in others),
  )


@functools.partial(jax.jit, static_argnames=("config", "exact"))
def _stopping_loop(
  variables,
  mixture,
  lengths,
  gmacs_by_exit,
  policy,
  references,
  reference_power,
  gains,
  *,
  config,
  exact,
):
  batch, time = mixture.shape
  # The loop runs at the training level (`input_gains`; ones when not asked); the
  # estimates are scaled back at its end.
  gains = gains.astype(mixture.dtype)
  mixture = mixture * gains[:, None]
  if references is not None:
    references = references * gains[:, None, None]
  carry = models.PressNet(config).apply(
    variables, mixture, lengths=lengths, method=models.PressNet.encode
  )
  # Compute is linear in time: an example padded to `time` costs its own length's share.
  gmacs_by_exit = gmacs_by_exit[:, None] * (lengths / time)
  variance_state = models.initial_variance_state(config, batch, time)

  def body(state):
    k, params, carry, variance_state, result, done = state
    carry, variance_state, exit_output = models.apply_stage(
      config, params, carry, time, variance_state
    )
    # Post-hoc calibration acts on what the policy reads, not on the running sums of
    # `variance_state`, which are the network's own.
    exit_output = {
      **exit_output,
      "variance": probabilistic.apply_posthoc(
        exit_output["variance"],
        {name: scale[k] for name, scale in policy.posthoc_scales.items()},
        crosstalk=probabilistic.crosstalk(exit_output["estimates"])[:, None, None],
      ),
    }
    probability, inputs = _stopping_inputs(
      policy,
      exit_output,
      mixture=mixture,
      references=references,
      reference_power=reference_power,
      lengths=lengths,
      config=config,
      exact=exact,
    )
    # The last exit accepts whatever the policy says (`stopping.first_accepting_exit`).
    stop = stopping.accepts(policy, k + 1, **inputs) | (k + 1 == config.num_exits)
    newly_stopped = stop & ~done
    stopped_now = SeparationResult(
      estimates=exit_output["estimates"].astype(mixture.dtype),
      exit_index=jnp.full((batch,), k + 1, jnp.int32),
      probability=probability.astype(jnp.float32),
      gmacs=gmacs_by_exit[k],
    )
    result = jax.tree.map(
      lambda new, old: jnp.where(newly_stopped.reshape((batch,) + (1,) * (old.ndim - 1)), new, old),
      stopped_now,
      result,
    )
    # The next stage's parameters travel in the loop state, which XLA materialises:
    # sliced where they are used, the dynamic slice would be fused into every
    # element-wise fusion that reads a parameter and recomputed per element.
    next_params = models.stage_params(variables, jnp.minimum(k + 1, config.num_exits - 1))
    return k + 1, next_params, carry, variance_state, result, done | stop

  def cond(state):
    k, _, _, _, _, done = state
    return (k < config.num_exits) & ~jnp.all(done)

  initial = SeparationResult(
    estimates=jnp.zeros((batch, config.num_sources, time), mixture.dtype),
    exit_index=jnp.zeros((batch,), jnp.int32),
    probability=jnp.zeros((batch,), jnp.float32),
    gmacs=jnp.zeros((batch,), jnp.float32),
  )
  state = (
    jnp.int32(0),
    models.stage_params(variables, 0),
    carry,
    variance_state,
    initial,
    jnp.zeros((batch,), bool),
  )
  result = jax.lax.while_loop(cond, body, state)[4]
  return result.replace(estimates=result.estimates / gains[:, None, None])


def separate(
  variables,
  config,
  mixture,
  *,
  policy="probabilistic",
  target_snr_db=stopping.TARGET_SNR_DB,
  confidence=stopping.CONFIDENCE,
  conditions=("snr",),
  exit_index=None,
  references=None,
  reference_power=None,
  exact=True,
  posthoc_scales=None,
  lengths=None,
  normalize_level=True,
):
  """Separate `mixture`, stopping each example at the first exit its policy accepts.

  Each example is brought to the level the network was trained at (`input_gains`)
  and its estimates scaled back, so that the result does not depend on its level
  (exit probabilities are ratios of powers, computed at the training level).

  Args:
    variables: the model variables, as returned by `PressNet(config).init`.
    config: the model's `models.PressNetConfig`.
    mixture: `[batch, time]`.
    policy: a `stopping.Policy` (then the keywords up to `posthoc_scales` are unused),
      or the name of its kind: `"probabilistic"` (stop when `P(SNR ≥ γ) ≥ confidence`), `"expected-snr"`
      (stop when the expected SNR of every source reaches `γ`), `"fixed"` (stop at
      `exit_index`) or `"oracle"` (stop when the true SNR reaches `γ`; needs
      `references`; an upper bound only).
    target_snr_db: the target `γ` in dB.
    confidence: the probability `p` the probabilistic policy requires.
    conditions: which exit conditions to combine (docs/method.md §4): any of `"snr"`,
      `"snri"` and `"snr_ref"` (the latter needs `reference_power`, a power per
      sample such as the training set's mean source power).
    exit_index: the 1-based exit for `policy="fixed"`.
    references: `[batch, sources, time]` clean sources, for `policy="oracle"`.
    reference_power: scalar or `[batch]` reference power, for `"snr_ref"`.
    exact: incomplete-beta (`True`) or large-`T` gamma (`False`) exit probability.
    posthoc_scales: per-exit post-hoc calibration `{name: [exits]}`
      (`calibration.load_posthoc`), applied to exit `k`'s variance parameters before
      its probability (and expected SNR) is computed; None: the identity. The scales
      are traced inputs: other values reuse the compiled loop.
    lengths: `[batch]` valid samples of each example, zero-padded beyond (None: all
      of `time`). Each example then stops, and is estimated, as it would be alone at
      its own length, so signals of many lengths can share one compiled loop; its
      estimates are zero beyond its length and its `gmacs` are its length's.
    normalize_level: bring each example to the training level (`input_gains`); False
      runs the network on `mixture` as it is, as training and `evaluate.exit_outputs`
      do (for a mixture already at the training level, `training_level`).

  Returns:
    A `SeparationResult`.

  Example:
    >>> config = models.preset("tiny")
    >>> variables = models.PressNet(config).init(jax.random.key(0), jnp.zeros((1, 800)))
    >>> result = separate(variables, config, jnp.ones((1, 800)), target_snr_db=10.0)
    >>> result.exit_index.shape
    (1,)
  """
  if isinstance(policy, str):
    policy = stopping.Policy(
      kind=policy,
      target_snr_db=target_snr_db,
      confidence=confidence,
      exit_index=exit_index,
      conditions=tuple(conditions),
      posthoc_scales=posthoc_scales,
    )
  policy.check(config.num_exits)
  if policy.kind == "oracle" and references is None:
    raise ValueError("policy='oracle' needs the clean references")
  if "snr_ref" in policy.conditions and reference_power is None:
    raise ValueError("the 'snr_ref' condition needs reference_power")
  mixture = jnp.asarray(mixture)
  if mixture.ndim != 2:
    raise ValueError(f"mixture must be [batch, time], got shape {mixture.shape}")
  batch, time = mixture.shape
  lengths = models.valid_lengths(lengths, batch, time)
  gmacs_by_exit = jnp.asarray(models.gmacs_by_exit(config, time), jnp.float32)
  # Traced numbers, every scale of the likelihood (ones where none was fitted): other
  # targets, confidences, exits and scales reuse the compiled loop.
  policy = policy.replace(
    target_snr_db=jnp.float32(policy.target_snr_db),
    confidence=jnp.float32(policy.confidence),
    exit_index=jnp.int32(policy.exit_index or config.num_exits),
    posthoc_scales={
      name: jnp.asarray(scale, jnp.float32)
      for name, scale in probabilistic.full_posthoc(policy.posthoc_scales, config).items()
    },
  )
  return _stopping_loop(
    variables,
    mixture,
    lengths,
    gmacs_by_exit,
    policy,
    references,
    jnp.asarray(0.0 if reference_power is None else reference_power, jnp.float32),
    input_gains(mixture, lengths) if normalize_level else jnp.ones((batch,), mixture.dtype),
    config=config,
    exact=exact,
  )


@dataclasses.dataclass(frozen=True)
class ChunkExits:
  """Where each chunk of a long signal stopped, and what that cost.

  Attributes:
    starts: `[chunks]` first sample of each chunk, at the model's sample rate.
    exit_index: `[chunks]` the 1-based exit each chunk stopped at.
    probability: `[chunks]` the exit probability at that exit.
    gmacs: `[chunks]` giga multiply-accumulates each chunk's own exit needs.
    full_depth_gmacs: what running every chunk to the last exit would cost.
    executed_gmacs: `[chunks]` what each chunk's batch ran for it: the compute of the
      batch's deepest exit, since a batch runs until its last chunk stops. Above
      `gmacs` where chunks of one batch stop at different exits, so that the saving
      `gmacs` gives is a count of FLOPs, not of time.
  """

  starts: np.ndarray
  exit_index: np.ndarray
  probability: np.ndarray
  gmacs: np.ndarray
  full_depth_gmacs: float
  executed_gmacs: np.ndarray

  @property
  def mean_exit(self):
    return float(np.mean(self.exit_index))

  @property
  def min_probability(self):
    return float(np.min(self.probability))

  @property
  def total_gmacs(self):
    return float(np.sum(self.gmacs))

  @property
  def total_executed_gmacs(self):
    return float(np.sum(self.executed_gmacs))


@dataclasses.dataclass(frozen=True)
class LongSeparationResult:
  """What `separate_long` returns: `estimates` `[sources, time]` and the chunks' `exits`."""

  estimates: np.ndarray
  exits: ChunkExits


class ChunkingError(ValueError):
  """Chunks `separate_long` cannot cut: `field` (`chunk_seconds`, `overlap_seconds`)
  and what is wrong with it."""

  def __init__(self, field, problem):
    self.field, self.problem = field, problem
    super().__init__(f"{field}: {problem}")


def device_memory_bytes(device=None):
  """The memory of `device` (default: the first): what its allocator may use, or, for
  a CPU, the machine's physical memory."""
  device = device or jax.local_devices()[0]
  stats = device.memory_stats() if hasattr(device, "memory_stats") else None
  if stats and stats.get("bytes_limit"):
    return int(stats["bytes_limit"])
  return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def longest_chunk_seconds(config, chunk_batch, memory_bytes=None):
  """The longest chunk a batch of `chunk_batch` chunks fits `MEMORY_SHARE` of the
  device's memory with (`FLOATS_PER_FRAME_CHANNEL`)."""
  memory_bytes = device_memory_bytes() if memory_bytes is None else memory_bytes
  channels = max(config.width * config.num_sources, config.encoder_features)
  bytes_per_frame = 4 * FLOATS_PER_FRAME_CHANNEL * channels * chunk_batch
  frames = MEMORY_SHARE * memory_bytes / bytes_per_frame
  return frames * config.encoder_stride / config.sample_rate


def check_chunk_memory(config, chunk_seconds, chunk_batch, memory_bytes=None):
  """Raises a `ChunkingError` when `chunk_batch` chunks of `chunk_seconds` would not fit
  in memory (`longest_chunk_seconds`)."""
  longest = longest_chunk_seconds(config, chunk_batch, memory_bytes)
  if chunk_seconds > longest:
    raise ChunkingError(
      "chunk_seconds",
      f"{chunk_batch} chunks that long at once "
      f"would not fit in this device's memory; at most {longest:.0f} s (or fewer chunks "
      "at once)",
    )


def chunk_lengths(config, chunk_seconds, overlap_seconds):
  """`(chunk, overlap)` in samples at `config.sample_rate`.

  Raises:
    ChunkingError: when the chunk is shorter than `MIN_CHUNK_KERNELS` encoder kernels,
      the overlap shorter than `MIN_OVERLAP_KERNELS`, or longer than half a chunk: the
      overlap is where consecutive chunks are matched and cross-faded, and a chunk's
      fade-in must end before its fade-out starts.
  """
  chunk = round(chunk_seconds * config.sample_rate)
  overlap = round(overlap_seconds * config.sample_rate)
  shortest = MIN_CHUNK_KERNELS * config.encoder_kernel
  if chunk < shortest:
    raise ChunkingError(
      "chunk_seconds",
      f"{chunk_seconds:g} s is shorter than the model's "
      f"{MIN_CHUNK_KERNELS} encoder kernels ({shortest} samples at {config.sample_rate} "
      f"Hz, {shortest / config.sample_rate:g} s), too short to separate",
    )
  shortest = MIN_OVERLAP_KERNELS * config.encoder_kernel
  if overlap < shortest:
    raise ChunkingError(
      "overlap_seconds",
      f"{overlap_seconds:g} s is shorter than the model's "
      f"{MIN_OVERLAP_KERNELS} encoder kernels ({shortest / config.sample_rate:g} s), "
      "too short to align the chunks' sources",
    )
  if not 2 * overlap <= chunk:
    raise ChunkingError(
      "overlap_seconds",
      f"{overlap_seconds:g} s is more than half of the {chunk_seconds:g} s "
      f"chunk ({overlap} of {chunk} samples at {config.sample_rate} Hz): at most "
      f"{chunk // 2 / config.sample_rate:g} s",
    )
  return chunk, overlap


def _chunk_starts(time, chunk, hop):
  """`[chunks]` first samples: every `hop` samples, the last chunk moved back to end
  at `time` so that no chunk needs padding."""
  if time <= chunk:
    return np.zeros(1, int)
  return np.append(np.arange(0, time - chunk, hop), time - chunk)


def chunk_starts(config, time, chunk_seconds=CHUNK_SECONDS, overlap_seconds=OVERLAP_SECONDS):
  """`(starts, chunk)`: where `separate_long` cuts a `time`-sample signal, `[chunks]`
  first samples, and the chunks' length (the whole signal when it is no longer)."""
  chunk, overlap = chunk_lengths(config, chunk_seconds, overlap_seconds)
  return _chunk_starts(time, chunk, chunk - overlap), min(chunk, time)


def _fade_in(overlap):
  """`[overlap]` rising half of a Hann window. It and `1 - _fade_in` sum to one, so a
  cross-fade between two estimates of the same signal keeps its level."""
  return np.sin(0.5 * np.pi * (np.arange(overlap) + 0.5) / overlap).astype(np.float32) ** 2


def _chunk_weight(chunk, fade_in, fade_start, last):
  """`[chunk]` overlap-add weight: zero before `fade_start`, fading in from there (no
  fade-in when it is None, the first chunk), and fading out over the end unless `last`."""
  weight = np.ones(chunk, np.float32)
  overlap = fade_in.shape[0]
  if fade_start is not None:
    weight[:fade_start] = 0.0
    weight[fade_start : fade_start + overlap] = fade_in
  if not last:
    weight[-overlap:] *= 1.0 - fade_in
  return weight


def align_sources(reference, estimates):
  """The order of `estimates`' sources that best matches `reference`'s.

  Maximises the summed inner products of matched sources, which is the same as
  minimising their summed squared differences (the energies do not depend on the order).

  Args:
    reference: `[sources, time]`.
    estimates: `[sources, time]`, the same stretch of signal from another chunk.

  Returns:
    `[sources]` indices: `estimates[order]` lines up with `reference`.
  """
  # `pairwise[i, j]`: estimate `i` against reference `j`.
  correlation = estimates.astype(np.float64) @ reference.T.astype(np.float64)
  return np.asarray(permutation.reference_order(correlation))


def separate_long(
  variables,
  config,
  mixture,
  *,
  chunk_seconds=CHUNK_SECONDS,
  overlap_seconds=OVERLAP_SECONDS,
  chunk_batch=CHUNK_BATCH,
  progress=None,
  **separate_kwargs,
):
  """Separates one signal of any length in overlapping chunks.

  Chunks last `chunk_seconds` and start every `chunk_seconds - overlap_seconds`; the
  last one is moved back to end with the signal, so every chunk holds real audio and
  has the same shape, and the stopping loop compiles once. A signal shorter than a
  chunk is zero-padded to one and separated with its valid length, which gives what
  `separate` gives it alone: every file shares that one compiled loop. Chunks go
  through `separate`
  in batches of at most `chunk_batch`, all of one size, so memory beyond the
  `[sources, time]` output does not grow with the signal's length.

  The whole signal is brought to the training level (`training_level`, its peak to
  `INPUT_PEAK`) before it is cut, and the estimates are scaled back: quality does not
  depend on the signal's level, and the chunks keep their relative levels.

  Each chunk stops on its own, at the first exit its policy accepts: with the
  probabilistic policy, `P(SNR ≥ γ) ≥ p` holds for every chunk rather than for the
  signal as a whole. `exits` reports every chunk's exit, probability and compute.

  Sources may come out of two chunks in different orders, so each chunk's are put in
  the order that matches the previous chunk's on their cross-fade (`align_sources`);
  the two are then cross-faded over `overlap_seconds` with complementary Hann halves.

  Args:
    variables: the model variables, as returned by `PressNet(config).init`.
    config: the model's `models.PressNetConfig`.
    mixture: `[time]` at `config.sample_rate`.
    chunk_seconds: length of a chunk.
    overlap_seconds: how long consecutive chunks overlap; at most half a chunk.
    chunk_batch: the most chunks separated together.
    progress: optional `progress(done, total)`, called with the chunks separated so
      far before the first batch and after each (a progress bar, say).
    **separate_kwargs: `separate`'s stopping keywords (`policy`, `target_snr_db`,
      `confidence`, `conditions`, `exit_index`, `posthoc_scales`, ...).

  Returns:
    A `LongSeparationResult`.
  """
  mixture = np.asarray(mixture, np.float32)
  if mixture.ndim != 1 or not mixture.size:
    raise ValueError(f"mixture must be a non-empty [time], got shape {mixture.shape}")
  gain, mixture = training_level(mixture)
  time = mixture.shape[0]
  chunk, overlap = chunk_lengths(config, chunk_seconds, overlap_seconds)
  check_chunk_memory(config, chunk_seconds, chunk_batch)
  starts, valid = chunk_starts(config, time, chunk_seconds, overlap_seconds)
  mixture = np.pad(mixture, (0, chunk - valid))  # `valid`: signal samples in each chunk.
  # As few batches as `chunk_batch` allows, filled evenly, so that padding the last
  # one wastes less than a chunk per batch.
  num_batches = -(-starts.size // chunk_batch)
  batch = -(-starts.size // num_batches)
  fade_in = _fade_in(overlap)
  estimates = np.zeros((config.num_sources, time), np.float32)
  per_chunk = {"exit_index": [], "probability": [], "gmacs": []}
  executed = []
  previous_tail = previous_end = None
  if progress:
    progress(0, starts.size)
  for first in range(0, starts.size, batch):
    batch_starts = starts[first : first + batch]
    # Repeating the last chunk keeps every batch the same shape, and a repeat stops
    # where its original does, so the loop does not run longer for it.
    padded = np.pad(batch_starts, (0, batch - batch_starts.size), mode="edge")
    result = jax.device_get(
      separate(
        variables,
        config,
        np.stack([mixture[s : s + chunk] for s in padded]),
        lengths=np.full(batch, valid),
        normalize_level=False,
        **separate_kwargs,
      )
    )
    for name, values in per_chunk.items():
      values.append(getattr(result, name)[: batch_starts.size])
    executed.append(np.full(batch_starts.size, np.max(result.gmacs)))
    for start, chunk_estimates in zip(batch_starts, result.estimates[..., :valid]):
      fade_start = None
      if previous_tail is not None:
        fade_start = previous_end - overlap - start
        order = align_sources(previous_tail, chunk_estimates[:, fade_start : fade_start + overlap])
        chunk_estimates = chunk_estimates[order]
      end = start + valid
      weight = _chunk_weight(valid, fade_in, fade_start, last=end == time)
      estimates[:, start:end] += weight * chunk_estimates
      previous_tail, previous_end = chunk_estimates[:, -overlap:], end
    if progress:
      progress(first + batch_starts.size, starts.size)
  exits = ChunkExits(
    starts=starts,
    **{name: np.concatenate(values) for name, values in per_chunk.items()},
    full_depth_gmacs=starts.size * models.gmacs_by_exit(config, chunk)[-1] * valid / chunk,
    executed_gmacs=np.concatenate(executed),
  )
  return LongSeparationResult(estimates=estimates / np.float32(gain), exits=exits)
