"""The stopping rule: which exits a policy accepts, and the exit an example takes.

This module is the rule's only definition. The inference loop (`inference.separate`)
applies it stage by stage to the exit it has just computed; evaluation and
calibration apply it across the exit axis of the per-exit arrays they hold. Exits are
numbered from 1, the first exit after the first stage, everywhere.

A `Policy` is a pytree: its numbers (target, confidence, exit, post-hoc scales) are
traced, so other values reuse a compiled loop; its kind and conditions are static.
"""

import flax
import jax.numpy as jnp

from eesep_jax.core import probabilistic

# The policies, in the order of operating points' policy axis.
POLICIES = ("probabilistic", "expected-snr", "oracle", "fixed")
# The defaults of `eesep separate` and `inference.separate`: a 15 dB target met with
# probability 0.9.
TARGET_SNR_DB = 15.0
CONFIDENCE = 0.9
# The grids over which evaluation and calibration simulate the policies; the
# confidences fine enough for target satisfaction to read as a curve over `p`.
TARGETS_DB = (5.0, 10.0, 15.0, 20.0)
CONFIDENCES = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95)


@flax.struct.dataclass
class Policy:
  """When to stop.

  Attributes:
    kind: `"probabilistic"` (accept when `P(SNR ≥ γ) ≥ confidence`), `"expected-snr"`
      (when every source's expected SNR reaches `γ`), `"fixed"` (at `exit_index`) or
      `"oracle"` (when the worst source's true SNR reaches `γ`: an upper bound only).
    target_snr_db: `γ` in dB.
    confidence: the probability `p` the probabilistic policy requires.
    exit_index: the 1-based exit of the fixed policy (the others ignore it).
    conditions: the exit conditions `P(SNR ≥ γ)` combines (`probabilistic.exit_probability`).
    posthoc_scales: per-exit post-hoc calibration `{name: [exits]}` applied to the
      variance parameters before any probability or expected SNR is read; None: none.
  """

  kind: str = flax.struct.field(pytree_node=False, default="probabilistic")
  target_snr_db: float = TARGET_SNR_DB
  confidence: float = CONFIDENCE
  exit_index: int | None = None
  conditions: tuple = flax.struct.field(pytree_node=False, default=("snr",))
  posthoc_scales: dict | None = None

  def check(self, num_exits):
    """`self`, or a `ValueError` naming what a network of `num_exits` exits cannot run."""
    if self.kind not in POLICIES:
      raise ValueError(f"policy={self.kind!r} is not one of {POLICIES}")
    unknown = set(self.conditions) - set(probabilistic.CONDITIONS)
    if unknown or not self.conditions:
      raise ValueError(
        f"conditions={self.conditions!r}: choose one or more of {probabilistic.CONDITIONS}"
      )
    if self.kind == "fixed" and not (self.exit_index and 1 <= self.exit_index <= num_exits):
      raise ValueError(
        f"policy='fixed' needs exit_index in 1..{num_exits}, got {self.exit_index!r}"
      )
    return self


def accepts(policy, exit_number, *, probability=None, expected_snr_db=None, oracle_snr_db=None):
  """Whether `policy` accepts an exit, for arrays of any shape that broadcast.

  Each policy reads one input, and the others may be None: `probability`
  (`P(SNR ≥ γ)`, probabilistic), `expected_snr_db` (the worst source's expected SNR,
  expected-snr), `oracle_snr_db` (the worst source's true SNR under its best
  permutation, oracle) or `exit_number` (1-based, fixed).

  Returns:
    A bool array: the broadcast shape of the input read.
  """
  if policy.kind == "probabilistic":
    return probability >= policy.confidence
  if policy.kind == "expected-snr":
    return expected_snr_db >= policy.target_snr_db
  if policy.kind == "oracle":
    return oracle_snr_db >= policy.target_snr_db
  if policy.kind == "fixed":
    return jnp.asarray(exit_number) >= policy.exit_index
  raise ValueError(f"policy={policy.kind!r} is not one of {POLICIES}")


def first_accepting_exit(accept):
  """The exit taken: the 1-based index of the first accepting exit, the last exit when
  none accepts. `[..., exits]` bool -> `[...]` int32."""
  accept = jnp.asarray(accept).at[..., -1].set(True)
  return jnp.argmax(accept, axis=-1).astype(jnp.int32) + 1
