"""The permutation search: which estimated source goes to which reference.

Separation networks output their sources in no particular order. Every consumer of an
order (the training loss, the oracle policy, evaluation and the alignment of a long
signal's chunks) scores every estimate against every reference in a `pairwise` array
`[..., sources, sources]` (estimate `i`, reference `j`) and searches the permutations
here. Exhaustive: meant for `sources <= 4` (24 permutations).
"""

import itertools

import jax.numpy as jnp


def table(num_sources):
  """All permutations as int32 `[permutations, sources]`: permutation `p` assigns
  estimate `i` to reference `table[p, i]`."""
  return jnp.array(list(itertools.permutations(range(num_sources))), dtype=jnp.int32)


def matched(pairwise):
  """Each permutation's matched scores: `[..., sources, sources] -> [..., permutations,
  sources]`, entry `[p, i]` being `pairwise[..., i, table[p, i]]`."""
  perms = table(pairwise.shape[-1])
  return jnp.take_along_axis(
    pairwise[..., None, :, :],
    jnp.broadcast_to(perms[:, :, None], pairwise.shape[:-2] + perms.shape + (1,)),
    axis=-1,
  )[..., 0]


def mean_over_sources(pairwise):
  """Every permutation's mean matched score: `[..., sources, sources] -> [...,
  permutations]` (the loss of an assignment, minimised in training)."""
  return jnp.mean(matched(pairwise), axis=-1)


def worst_source(pairwise):
  """The best permutation's worst matched score: `[..., sources, sources] -> [...]`
  (e.g. the worst source's SNR when each permutation is judged by its worst source)."""
  return jnp.max(jnp.min(matched(pairwise), axis=-1), axis=-1)


def reference_order(pairwise):
  """The estimates in reference order under the permutation of highest total score:
  `[..., sources, sources] -> [..., sources]` int32, entry `j` being the estimate that
  goes to reference `j`."""
  best = jnp.argmax(jnp.sum(matched(pairwise), axis=-1), axis=-1)
  return jnp.argsort(table(pairwise.shape[-1])[best], axis=-1).astype(jnp.int32)
