"""Inference that stops: a `lax.while_loop` over stages (METHOD.md §7).

The loop runs stage `k` and its exit head, evaluates the stopping policy, freezes the
examples that stop, and ends once every example has stopped or the last stage ran.
Stage `k`'s parameters are sliced out of the same stacked tree that training uses, so
`variables` is exactly what `PressNet(config).init` returns.

Compute is accounted from XLA's cost analysis of the encoder and of one stage (see
`models.gmacs_by_exit`), summed along the path each example actually took: the
loop body is counted once by XLA, so a cost analysis of the whole loop would be wrong.
"""

import functools

import flax
import jax
import jax.numpy as jnp

from eesep_jax import losses
from eesep_jax import metrics
from eesep_jax import models
from eesep_jax import probabilistic

POLICIES = ("probabilistic", "expected-snr", "fixed", "oracle")
CONDITIONS = ("snr", "snri", "snr_ref")


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


def _oracle_snr(references, estimates):
  """Worst-source SNR under the best permutation: `[batch, sources, time] -> [batch]`."""
  pairwise = metrics.snr(references[:, None, :, :], estimates[:, :, None, :])
  table = losses.permutation_table(estimates.shape[1])
  snr_by_permutation = jnp.min(
      jnp.take_along_axis(pairwise[:, None], table[None, :, :, None], axis=-1)[..., 0],
      axis=-1)
  return jnp.max(snr_by_permutation, axis=-1)


def _should_stop(policy, exit_output, stage, *, target_snr_db, confidence, exit_index,
                 probability, references, variance_config):
  """Per-example stopping decision `[batch]` of `policy` at 1-based exit `stage`."""
  estimates = exit_output["estimates"]
  if policy == "probabilistic":
    return probability >= confidence
  if policy == "expected-snr":
    expected = probabilistic.expected_snr_db(estimates, exit_output["variance"],
                                             variance_config)
    return jnp.min(expected, axis=-1) >= target_snr_db
  if policy == "fixed":
    return jnp.broadcast_to(stage >= exit_index, probability.shape)
  return _oracle_snr(references, estimates) >= target_snr_db


@functools.partial(jax.jit, static_argnames=("config", "policy", "conditions", "exact"))
def _stopping_loop(variables, mixture, gmacs_by_exit, target_snr_db, confidence,
                   exit_index, references, reference_power, *, config, policy,
                   conditions, exact):
  batch, time = mixture.shape
  carry = models.PressNet(config).apply(variables, mixture, method=models.PressNet.encode)
  num_blocks = probabilistic.num_variance_blocks(time, config.variance)
  variance_state = probabilistic.init_variance_state(
      (batch, config.num_sources), num_blocks, config.variance)

  def run_stage(k, carry, variance_state):
    carry, variance_state, exit_output = models.apply_stage(
        config, models.stage_params(variables, k), carry, time, variance_state)
    probability = probabilistic.exit_probability(
        exit_output["estimates"], exit_output["variance"], target_snr_db,
        conditions=conditions, mixture=mixture, reference_power=reference_power,
        config=config.variance, exact=exact)
    return carry, variance_state, exit_output, probability

  def body(state):
    k, carry, variance_state, result, done = state
    carry, variance_state, exit_output, probability = run_stage(k, carry, variance_state)
    stop = _should_stop(
        policy, exit_output, k + 1, target_snr_db=target_snr_db, confidence=confidence,
        exit_index=exit_index, probability=probability, references=references,
        variance_config=config.variance)
    stop = stop | (k + 1 == config.num_exits)
    newly_stopped = stop & ~done
    stopped_now = SeparationResult(
        estimates=exit_output["estimates"].astype(mixture.dtype),
        exit_index=jnp.full((batch,), k + 1, jnp.int32),
        probability=probability.astype(jnp.float32),
        gmacs=jnp.full((batch,), gmacs_by_exit[k]))
    result = jax.tree.map(
        lambda new, old: jnp.where(
            newly_stopped.reshape((batch,) + (1,) * (old.ndim - 1)), new, old),
        stopped_now, result)
    return k + 1, carry, variance_state, result, done | stop

  def cond(state):
    k, _, _, _, done = state
    return (k < config.num_exits) & ~jnp.all(done)

  initial = SeparationResult(
      estimates=jnp.zeros((batch, config.num_sources, time), mixture.dtype),
      exit_index=jnp.zeros((batch,), jnp.int32),
      probability=jnp.zeros((batch,), jnp.float32),
      gmacs=jnp.zeros((batch,), jnp.float32))
  state = (jnp.int32(0), carry, variance_state, initial, jnp.zeros((batch,), bool))
  return jax.lax.while_loop(cond, body, state)[3]


def separate(variables, config, mixture, *, policy="probabilistic", target_snr_db=15.0,
             confidence=0.9, conditions=("snr",), exit_index=None, references=None,
             reference_power=None, exact=True):
  """Separate `mixture`, stopping each example at the first exit its policy accepts.

  Args:
    variables: the model variables, as returned by `PressNet(config).init`.
    config: the model's `models.PressNetConfig`.
    mixture: `[batch, time]`.
    policy: `"probabilistic"` (stop when `P(SNR ≥ γ) ≥ confidence`), `"expected-snr"`
      (stop when the expected SNR of every source reaches `γ`), `"fixed"` (stop at
      `exit_index`) or `"oracle"` (stop when the true SNR reaches `γ`; needs
      `references`; an upper bound only).
    target_snr_db: the target `γ` in dB.
    confidence: the probability `p` the probabilistic policy requires.
    conditions: which exit conditions to combine (METHOD.md §4): any of `"snr"`,
      `"snri"` and `"snr_ref"` (the latter needs `reference_power`, a power per
      sample such as the training set's mean source power).
    exit_index: the 1-based exit for `policy="fixed"`.
    references: `[batch, sources, time]` clean sources, for `policy="oracle"`.
    reference_power: scalar or `[batch]` reference power, for `"snr_ref"`.
    exact: incomplete-beta (`True`) or large-`T` gamma (`False`) exit probability.

  Returns:
    A `SeparationResult`.

  Example:
    >>> config = models.preset("tiny")
    >>> variables = models.PressNet(config).init(jax.random.key(0), jnp.zeros((1, 800)))
    >>> result = separate(variables, config, jnp.ones((1, 800)), target_snr_db=10.0)
    >>> result.exit_index.shape
    (1,)
  """
  if policy not in POLICIES:
    raise ValueError(f"policy={policy!r} is not one of {POLICIES}")
  unknown = set(conditions) - set(CONDITIONS)
  if unknown or not conditions:
    raise ValueError(f"conditions={conditions!r}: choose one or more of {CONDITIONS}")
  if policy == "fixed" and not (exit_index and 1 <= exit_index <= config.num_exits):
    raise ValueError(f"policy='fixed' needs exit_index in 1..{config.num_exits}, "
                     f"got {exit_index!r}")
  if policy == "oracle" and references is None:
    raise ValueError("policy='oracle' needs the clean references")
  if "snr_ref" in conditions and reference_power is None:
    raise ValueError("the 'snr_ref' condition needs reference_power")
  mixture = jnp.asarray(mixture)
  if mixture.ndim != 2:
    raise ValueError(f"mixture must be [batch, time], got shape {mixture.shape}")
  batch, time = mixture.shape
  if references is None:
    references = jnp.zeros((batch, config.num_sources, time), mixture.dtype)
  gmacs_by_exit = jnp.asarray(models.gmacs_by_exit(config, time), jnp.float32)
  return _stopping_loop(
      variables, mixture, gmacs_by_exit, jnp.float32(target_snr_db),
      jnp.float32(confidence), jnp.int32(exit_index or config.num_exits), references,
      jnp.asarray(0.0 if reference_power is None else reference_power, jnp.float32),
      config=config, policy=policy, conditions=tuple(conditions), exact=exact)
