"""Permutation-invariant training objectives over every exit (docs/method.md §3, §6).

The network emits `E` exits, each with estimates `[exits, batch, sources, time]` and
variance parameters `[exits, batch, sources, blocks]`. The loss is the (optionally
weighted) sum over exits of a per-exit objective averaged over batch and sources.
Which estimate goes with which reference is decided by a permutation chosen **once
per utterance, jointly over all exits** (the default), or per exit as an ablation.
"""

import jax
import jax.numpy as jnp

from eesep_jax.core import metrics
from eesep_jax.core import permutation as permutation_lib
from eesep_jax.core import probabilistic

OBJECTIVES = ("nll", "snr", "si-snr")
MEAN_LOSSES = ("nll", "snr")
PERMUTATIONS = ("joint", "per-exit")


def pairwise_source_loss(
  estimates, variance, references, *, objective, mean_loss, variance_config, lengths=None
):
  """Loss of every estimate against every reference.

  Args:
    estimates: `[..., sources, time]`, zero beyond `lengths`.
    variance: variance parameters, each `[..., sources, blocks]` (used by `nll`).
    references: `[batch, sources, time]`, broadcastable against `estimates`' trailing
      `[batch, sources, time]` dims; zero beyond `lengths`.
    objective: `"nll"` (probabilistic), `"snr"` or `"si-snr"` (negative, in dB).
    mean_loss: with `objective="nll"`, `"snr"` trains the estimate by negative SNR and
      the variance head by the NLL of a stopped-gradient estimate (docs/method.md §3).
    variance_config: the `probabilistic.VarianceConfig` the parameters came from.
    lengths: `[batch]` valid samples of each example, or None (all `time`). The SNR
      needs none (padding adds no energy); the NLL's sample counts and SI-SNR's mean
      do.

  Returns:
    `[..., estimate_sources, reference_sources]` losses.
  """
  estimate_i = estimates[..., :, None, :]
  reference_j = references[..., None, :, :]
  if lengths is not None:
    lengths = jnp.asarray(lengths)[:, None, None]  # Over the source pairs.
  if objective == "snr":
    return -metrics.snr(reference_j, estimate_i)
  if objective == "si-snr":
    return -metrics.si_snr(reference_j, estimate_i, lengths)
  params_i = jax.tree.map(lambda p: p[..., :, None, :], variance)
  reference_j, estimate_i = jnp.broadcast_arrays(reference_j, estimate_i)
  if mean_loss == "nll":
    return probabilistic.exit_nll(
      reference_j, estimate_i, params_i, variance_config, lengths=lengths
    )
  return -metrics.snr(reference_j, estimate_i) + probabilistic.exit_nll(
    reference_j, jax.lax.stop_gradient(estimate_i), params_i, variance_config, lengths=lengths
  )


def _check_choice(name, value, choices):
  if value not in choices:
    raise ValueError(f"{name}={value!r} is not one of {choices}")


def separation_loss(
  outputs,
  references,
  *,
  variance_config,
  objective="nll",
  mean_loss="nll",
  permutation="joint",
  exit_weights=None,
  lengths=None,
):
  """The joint objective over all exits.

  Args:
    outputs: the model's output dict: `estimates` `[exits, batch, sources, time]` and
      `variance` (dict of `[exits, batch, sources, blocks]`).
    references: clean sources `[batch, sources, time]`.
    variance_config: the model's `probabilistic.VarianceConfig`.
    objective, mean_loss: see `pairwise_source_loss`.
    permutation: `"joint"` (one permutation per utterance minimising the weighted sum
      over exits) or `"per-exit"` (each exit picks its own; an ablation).
    exit_weights: optional `[exits]` weights; defaults to ones.
    lengths: `[batch]` valid samples of each utterance (None: all `time`); estimates
      and references must be zero beyond them. A zero-padded batch then has the loss
      of its utterances taken one by one.

  Returns:
    `(loss, aux)`: the scalar loss and `{"per_exit": [exits], "per_example": [exits,
    batch], "permutation": [batch, sources]}` (the joint permutation; for
    `"per-exit"`, the last exit's).
  """
  _check_choice("objective", objective, OBJECTIVES)
  _check_choice("mean_loss", mean_loss, MEAN_LOSSES)
  _check_choice("permutation", permutation, PERMUTATIONS)
  estimates = outputs["estimates"]
  num_exits, _, num_sources = estimates.shape[:3]
  weights = jnp.ones((num_exits,)) if exit_weights is None else jnp.asarray(exit_weights)
  pairwise = pairwise_source_loss(
    estimates,
    outputs["variance"],
    references,
    objective=objective,
    mean_loss=mean_loss,
    variance_config=variance_config,
    lengths=lengths,
  )
  per_permutation = permutation_lib.mean_over_sources(pairwise)  # [exits, batch, permutations]
  if permutation == "joint":
    best = jnp.argmin(jnp.einsum("e,ebp->bp", weights, per_permutation), axis=-1)
    best = jnp.broadcast_to(best, per_permutation.shape[:2])
  else:
    best = jnp.argmin(per_permutation, axis=-1)
  chosen = jnp.take_along_axis(per_permutation, best[..., None], axis=-1)[..., 0]
  per_exit = jnp.mean(chosen, axis=-1)
  aux = {
    "per_exit": per_exit,
    "per_example": chosen,
    "permutation": permutation_lib.table(num_sources)[best[-1]],
  }
  return jnp.sum(weights * per_exit), aux
