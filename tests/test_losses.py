"""Objectives against independent references (numpy loops, brute-force permutations)."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eesep_jax.core import losses
from eesep_jax.core import metrics
from eesep_jax.core import probabilistic

STUDENT = probabilistic.VarianceConfig(parameterisation="student-logvar")


def _signals(seed, shape):
  return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _brute_force_joint(pairwise):
  """numpy loop over permutations: pairwise [exits, batch, C, C] -> (loss [exits], perms)."""
  num_exits, batch, num_sources, _ = pairwise.shape
  per_exit = np.zeros(num_exits)
  chosen = []
  for b in range(batch):
    totals = {
      perm: sum(pairwise[e, b, i, perm[i]] for e in range(num_exits) for i in range(num_sources))
      for perm in itertools.permutations(range(num_sources))
    }
    best = min(totals, key=totals.get)
    chosen.append(best)
    for e in range(num_exits):
      per_exit[e] += np.mean([pairwise[e, b, i, best[i]] for i in range(num_sources)]) / batch
  return per_exit, np.array(chosen)


@pytest.mark.parametrize("num_sources", [1, 2, 3])
@pytest.mark.parametrize("objective", ["snr", "si-snr"])
def test_joint_permutation_matches_brute_force(num_sources, objective):
  references = _signals(2, (4, num_sources, 300))
  order = np.array([np.random.default_rng(b).permutation(num_sources) for b in range(4)])
  noise = _signals(3, (3, 4, num_sources, 300))
  # Every exit sees the same shuffled sources with exit-dependent noise.
  shuffled = np.take_along_axis(references, order[:, :, None], axis=1)
  estimates = shuffled[None] + np.array([0.2, 0.5, 1.0])[:, None, None, None] * noise
  outputs = {"estimates": jnp.asarray(estimates), "variance": {}}
  loss, aux = losses.separation_loss(
    outputs, jnp.asarray(references), objective=objective, variance_config=STUDENT
  )
  metric = metrics.snr if objective == "snr" else metrics.si_snr
  pairwise = -np.asarray(metric(references[None, :, None], estimates[:, :, :, None]))
  per_exit, chosen = _brute_force_joint(pairwise)
  np.testing.assert_allclose(aux["per_exit"], per_exit, rtol=1e-4)
  np.testing.assert_allclose(loss, per_exit.sum(), rtol=1e-4)
  np.testing.assert_array_equal(aux["permutation"], chosen)
  np.testing.assert_array_equal(aux["permutation"], order)


def test_joint_permutation_is_shared_and_per_exit_is_not():
  references = _signals(4, (1, 2, 400))
  swapped = references[:, ::-1]
  # Exit 1 is closer to the swapped order, exits 2 and 3 to the true order.
  estimates = np.stack(
    [
      0.55 * swapped + 0.45 * references,
      0.9 * references + 0.1 * swapped,
      references + 0.01 * swapped,
    ]
  )
  outputs = {"estimates": jnp.asarray(estimates), "variance": {}}
  joint, joint_aux = losses.separation_loss(
    outputs, references, objective="snr", variance_config=STUDENT
  )
  per_exit, per_exit_aux = losses.separation_loss(
    outputs, references, objective="snr", permutation="per-exit", variance_config=STUDENT
  )
  np.testing.assert_array_equal(joint_aux["permutation"], [[0, 1]])
  assert per_exit_aux["per_exit"][0] < joint_aux["per_exit"][0]
  np.testing.assert_allclose(per_exit_aux["per_exit"][1:], joint_aux["per_exit"][1:])
  assert per_exit < joint


def _nll_outputs(estimates, head_output=-3.0):
  num_exits, batch, num_sources, _ = estimates.shape
  raw = jnp.broadcast_to(jnp.array([head_output, 1.0]), (batch, num_sources, 1, 2))
  state = probabilistic.init_variance_state((batch, num_sources), 1, STUDENT)
  params = [
    probabilistic.variance_parameters(raw, estimates[e], state, STUDENT)[0]
    for e in range(num_exits)
  ]
  return {"estimates": estimates, "variance": jax.tree.map(lambda *p: jnp.stack(p), *params)}


def test_nll_objective_is_the_student_t_nll_of_the_best_permutation():
  references = jnp.asarray(_signals(5, (2, 2, 500)))
  estimates = references[None, :, ::-1] + 0.1 * jnp.asarray(_signals(6, (2, 2, 2, 500)))
  outputs = _nll_outputs(estimates)
  loss, aux = losses.separation_loss(outputs, references, variance_config=STUDENT)
  variance = outputs["variance"]
  expected = probabilistic.student_t_nll(
    references[None, :, ::-1], estimates, variance["alpha"][..., 0], variance["beta"][..., 0]
  )
  np.testing.assert_allclose(aux["per_exit"], expected.mean(axis=(1, 2)), rtol=1e-5)
  np.testing.assert_array_equal(aux["permutation"], [[1, 0], [1, 0]])


@pytest.mark.parametrize(
  "objective,mean_loss", [("nll", "nll"), ("nll", "snr"), ("snr", "nll"), ("si-snr", "nll")]
)
def test_gradients_finite_for_silent_references_and_perfect_estimates(objective, mean_loss):
  references = jnp.asarray(_signals(7, (2, 2, 300))).at[0, 1].set(0.0)
  estimates = jnp.stack([references, references + 0.1])

  def loss_fn(estimates):
    loss, _ = losses.separation_loss(
      _nll_outputs(estimates),
      references,
      objective=objective,
      mean_loss=mean_loss,
      variance_config=STUDENT,
    )
    return loss

  loss, grad = jax.value_and_grad(loss_fn)(estimates)
  assert np.isfinite(loss)
  assert np.all(np.isfinite(grad))


def test_snr_mean_loss_trains_the_estimate_by_snr_and_the_head_by_nll():
  references = jnp.asarray(_signals(8, (1, 1, 300)))
  estimates = references[None] + 0.3 * jnp.asarray(_signals(9, (1, 1, 1, 300)))

  def split_loss(estimates, head_output, mean_loss):
    outputs = _nll_outputs(estimates, head_output=head_output)
    return losses.separation_loss(
      outputs, references, mean_loss=mean_loss, variance_config=STUDENT
    )[0]

  grad_estimate, grad_head = jax.grad(split_loss, argnums=(0, 1))(estimates, -3.0, "snr")
  snr_grad = jax.grad(lambda e: -metrics.snr(references, e[0]).sum())(estimates)
  np.testing.assert_allclose(grad_estimate, snr_grad, rtol=1e-4, atol=1e-7)
  nll_head_grad = jax.grad(split_loss, argnums=1)(jax.lax.stop_gradient(estimates), -3.0, "nll")
  np.testing.assert_allclose(grad_head, nll_head_grad, rtol=1e-5)


def test_bad_choices_name_the_option():
  outputs = {"estimates": jnp.zeros((1, 1, 1, 10)), "variance": {}}
  with pytest.raises(ValueError, match="objective"):
    losses.separation_loss(outputs, jnp.zeros((1, 1, 10)), objective="l1", variance_config=STUDENT)


# ----------------------------------------------------------------------------------
# Zero padding: a padded batch has the loss of its utterances taken one by one.

PAD_LENGTHS = (1200, 800, 500)  # Padded to the first; 500 = one block and a part of 300.


def _padded_outputs(config, seed, lengths=PAD_LENGTHS, exits=2, num_sources=2):
  """`(outputs, references, lengths)` of a zero-padded batch whose variance parameters
  come from `variance_parameters` (with `lengths`), as the model's heads give them."""
  time = max(lengths)
  rng = np.random.default_rng(seed)
  valid = (np.arange(time) < np.array(lengths)[:, None])[:, None, :]
  references = rng.standard_normal((len(lengths), num_sources, time)) * valid
  noise = rng.standard_normal((exits, len(lengths), num_sources, time))
  scale = np.linspace(0.8, 0.3, exits)[:, None, None, None]  # Later exits are better.
  estimates = (references[:, ::-1] + scale * noise) * valid
  blocks = probabilistic.num_variance_blocks(time, config)
  raw = rng.normal(
    0, 2, (exits, len(lengths), num_sources, blocks, probabilistic.num_raw_outputs(config))
  )
  return (
    jnp.asarray(estimates, jnp.float32),
    jnp.asarray(raw, jnp.float32),
    jnp.asarray(references, jnp.float32),
  )


def _loss(config, estimates, raw, references, lengths=None, **kwargs):
  state = probabilistic.init_variance_state(estimates.shape[1:3], raw.shape[-2], config)
  # The heads' `[...]` is `[batch, sources]`.
  per_source = None if lengths is None else lengths[:, None]
  params = [
    probabilistic.variance_parameters(raw[e], estimates[e], state, config, lengths=per_source)[0]
    for e in range(estimates.shape[0])
  ]
  outputs = {"estimates": estimates, "variance": jax.tree.map(lambda *p: jnp.stack(p), *params)}
  return losses.separation_loss(
    outputs, references, variance_config=config, lengths=lengths, **kwargs
  )


@pytest.mark.parametrize(
  "name", ["student-snr", "student-logvar", "student-fixed-dof", "gaussian-logvar"]
)
@pytest.mark.parametrize("block_length", [None, 300])
@pytest.mark.parametrize("objective,mean_loss", [("nll", "nll"), ("nll", "snr")])
def test_padded_batch_has_the_loss_of_its_utterances(name, block_length, objective, mean_loss):
  config = probabilistic.VarianceConfig(parameterisation=name, block_length=block_length)
  estimates, raw, references = _padded_outputs(config, seed=10)
  kwargs = {"objective": objective, "mean_loss": mean_loss}
  loss, aux = _loss(config, estimates, raw, references, jnp.asarray(PAD_LENGTHS), **kwargs)
  alone = []
  for i, length in enumerate(PAD_LENGTHS):
    blocks = probabilistic.num_variance_blocks(length, config)
    alone.append(
      _loss(
        config,
        estimates[:, i : i + 1, :, :length],
        raw[:, i : i + 1, :, :blocks],
        references[i : i + 1, :, :length],
        **kwargs,
      )
    )
  np.testing.assert_allclose(
    aux["per_exit"], np.mean([a["per_exit"] for _, a in alone], 0), rtol=1e-5, atol=1e-6
  )
  np.testing.assert_allclose(loss, np.mean([value for value, _ in alone]), rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(
    aux["permutation"], np.concatenate([a["permutation"] for _, a in alone])
  )
  # Without the lengths, padding counts as error-free samples: the loss differs.
  unmasked, _ = _loss(config, estimates, raw, references, **kwargs)
  assert not np.isclose(unmasked, loss, rtol=1e-3)


@pytest.mark.parametrize("objective", ["snr", "si-snr"])
def test_padded_batch_has_the_signal_objective_of_its_utterances(objective):
  estimates, raw, references = _padded_outputs(STUDENT, seed=11)
  loss, _ = _loss(
    STUDENT, estimates, raw, references, jnp.asarray(PAD_LENGTHS), objective=objective
  )
  alone = [
    _loss(
      STUDENT,
      estimates[:, i : i + 1, :, :n],
      raw[:, i : i + 1],
      references[i : i + 1, :, :n],
      objective=objective,
    )[0]
    for i, n in enumerate(PAD_LENGTHS)
  ]
  np.testing.assert_allclose(loss, np.mean(alone), rtol=1e-5)


def test_nll_optimal_beta_is_not_shrunk_by_padding():
  """A 2 s utterance padded to 4 s: the `β` minimising the loss stays `α E/T_valid`
  (before, dividing by the padded length halved it)."""
  config = probabilistic.VarianceConfig(parameterisation="student-fixed-dof")
  estimates, _, references = _padded_outputs(
    config, seed=12, lengths=(1600, 800), exits=1, num_sources=1
  )
  energy = np.sum(np.square(np.asarray(references, np.float64) - estimates[0]), axis=-1)
  optimum = config.fixed_alpha * energy / np.array([[1600], [800]])  # β* = α E / T.

  def slope(log_beta, lengths):
    return jax.grad(lambda raw: _loss(config, estimates, raw, references, lengths)[0])(
      jnp.asarray(log_beta, jnp.float32)[None, :, :, None, None]
    )

  lengths = jnp.array([1600, 800])
  np.testing.assert_allclose(slope(np.log(optimum), lengths), 0.0, atol=1e-5)
  # Without the lengths the padded utterance's optimum is half as large.
  shrunk = np.log(optimum * np.array([[1.0], [0.5]]))
  np.testing.assert_allclose(slope(shrunk, None), 0.0, atol=1e-5)
  assert abs(slope(np.log(optimum), None)[0, 1]).max() > 50 * 1e-5
