"""The stopping loop against the training path (the scan over all exits)."""

import dataclasses

import jax
import numpy as np
import pytest

from conftest import si_snri_reference
from eesep_jax import inference
from eesep_jax import models
from eesep_jax.core import probabilistic

TIME = 1000


@pytest.fixture(scope="module", params=[False, True], ids=["independent", "monotone"])
def setup(request):
  config = models.preset("tiny")
  config = dataclasses.replace(
    config, variance=dataclasses.replace(config.variance, monotone=request.param)
  )
  mixture = jax.random.normal(jax.random.key(1), (3, TIME))
  variables = models.PressNet(config).init(jax.random.key(0), mixture)
  outputs = models.PressNet(config).apply(variables, mixture)
  return config, variables, mixture, outputs


def _training_probabilities(config, outputs, target_snr_db):
  """`[exits, batch]` exit probabilities computed from the training path's outputs."""
  return np.stack(
    [
      probabilistic.exit_probability(
        outputs["estimates"][k],
        jax.tree.map(lambda p: p[k], outputs["variance"]),
        target_snr_db,
        config=config.variance,
      )
      for k in range(config.num_exits)
    ]
  )


def test_fixed_exit_reproduces_the_training_path(setup):
  config, variables, mixture, outputs = setup
  for k in range(1, config.num_exits + 1):
    result = inference.separate(
      variables, config, mixture, policy="fixed", exit_index=k, normalize_level=False
    )
    np.testing.assert_array_equal(result.exit_index, k)
    np.testing.assert_allclose(result.estimates, outputs["estimates"][k - 1], atol=1e-5)


def test_probabilistic_policy_stops_at_the_first_confident_exit(setup):
  config, variables, mixture, outputs = setup
  target = 5.0
  probabilities = _training_probabilities(config, outputs, target)
  levels = np.unique(probabilities)
  # Midway between observed probabilities: the two paths agree to float tolerance only.
  for confidence in (levels[:-1] + levels[1:])[::2] / 2:
    result = inference.separate(
      variables,
      config,
      mixture,
      target_snr_db=target,
      confidence=float(confidence),
      normalize_level=False,
    )
    reached = probabilities >= confidence
    expected = np.where(reached.any(axis=0), reached.argmax(axis=0) + 1, config.num_exits)
    np.testing.assert_array_equal(result.exit_index, expected)
    rows = np.arange(mixture.shape[0])
    np.testing.assert_allclose(result.probability, probabilities[expected - 1, rows], atol=1e-6)
    np.testing.assert_allclose(
      result.estimates, np.asarray(outputs["estimates"])[expected - 1, rows], atol=1e-5
    )


def test_extreme_targets_exit_first_or_last(setup):
  config, variables, mixture, _ = setup
  easy = inference.separate(variables, config, mixture, target_snr_db=-100.0)
  np.testing.assert_array_equal(easy.exit_index, 1)
  hard = inference.separate(variables, config, mixture, target_snr_db=200.0)
  np.testing.assert_array_equal(hard.exit_index, config.num_exits)


def test_the_loop_compiles_once_per_shape(setup):
  config, variables, mixture, _ = setup
  inference._stopping_loop.clear_cache()
  for target, confidence in [(0.0, 0.5), (10.0, 0.9), (30.0, 0.99)]:
    inference.separate(variables, config, mixture, target_snr_db=target, confidence=confidence)
  assert inference._stopping_loop._cache_size() == 1


def test_compute_is_summed_along_the_path_taken(setup):
  config, variables, mixture, _ = setup
  per_exit = models.gmacs_by_exit(config, TIME)
  assert all(later > earlier for earlier, later in zip(per_exit, per_exit[1:]))
  for k in (1, config.num_exits):
    result = inference.separate(
      variables, config, mixture, policy="fixed", exit_index=k, normalize_level=False
    )
    np.testing.assert_allclose(result.gmacs, per_exit[k - 1], rtol=1e-6)


def test_expected_snr_and_oracle_policies(setup):
  config, variables, mixture, outputs = setup
  target = 3.0
  expected_snr = np.stack(
    [
      np.min(
        probabilistic.expected_snr_db(
          outputs["estimates"][k],
          jax.tree.map(lambda p: p[k], outputs["variance"]),
          config.variance,
        ),
        axis=-1,
      )
      for k in range(config.num_exits)
    ]
  )
  reached = expected_snr >= target
  expected = np.where(reached.any(axis=0), reached.argmax(axis=0) + 1, config.num_exits)
  result = inference.separate(
    variables, config, mixture, policy="expected-snr", target_snr_db=target, normalize_level=False
  )
  np.testing.assert_array_equal(result.exit_index, expected)
  # Exit 2's own output, as the reference, is reached (infinite SNR) at exit 2 at the latest.
  references = outputs["estimates"][1][:, ::-1]
  oracle = inference.separate(
    variables,
    config,
    mixture,
    policy="oracle",
    target_snr_db=60.0,
    references=references,
    normalize_level=False,
  )
  assert np.all(np.asarray(oracle.exit_index) <= 2)


@pytest.mark.parametrize(
  "kwargs,message",
  [
    ({"policy": "greedy"}, "policy"),
    ({"policy": "fixed"}, "exit_index"),
    ({"policy": "fixed", "exit_index": 99}, "exit_index"),
    ({"policy": "oracle"}, "references"),
    ({"conditions": ("snr", "pesq")}, "conditions"),
    ({"conditions": ("snr_ref",)}, "reference_power"),
  ],
)
def test_bad_arguments_are_named(setup, kwargs, message):
  config, variables, mixture, _ = setup
  with pytest.raises(ValueError, match=message):
    inference.separate(variables, config, mixture, **kwargs)


def test_separation_does_not_depend_on_the_input_level(setup):
  """From -60 to 0 dBFS peak (and beyond full scale), `separate` and `separate_long`
  give the same exits and the same estimates relative to their input's level, so the
  same SI-SNRi to float rounding; without the normalisation they do not."""
  config, variables, _, _ = setup
  rng = np.random.default_rng(0)
  references = rng.standard_normal((2, 4 * TIME)) * np.array([[1.0], [0.5]])
  mixture = references.sum(0)
  mixture, references = mixture / np.abs(mixture).max(), references / np.abs(mixture).max()
  levels = 10.0 ** (np.array([-60, -40, -20, -6, 0, 20]) / 20)
  alone, long_ = [], []
  for level in levels:
    result = inference.separate(
      variables, config, (level * mixture)[None], exit_index=2, policy="fixed"
    )
    alone.append(si_snri_reference(level * references, result.estimates[0], level * mixture))
    chunked = inference.separate_long(
      variables,
      config,
      level * mixture,
      exit_index=2,
      policy="fixed",
      chunk_seconds=TIME / config.sample_rate,
      overlap_seconds=200 / config.sample_rate,
    )
    assert chunked.exits.starts.size > 1
    np.testing.assert_allclose(
      chunked.estimates / level,
      long_[0][1] if long_ else chunked.estimates / level,
      rtol=1e-3,
      atol=1e-5,
    )
    long_.append(
      (
        si_snri_reference(level * references, chunked.estimates, level * mixture),
        chunked.estimates / level,
      )
    )
  assert np.ptp(alone) < 0.01 and np.ptp([value for value, _ in long_]) < 0.01, (alone, long_)
  raw = [
    si_snri_reference(
      level * references,
      inference.separate(
        variables,
        config,
        (level * mixture)[None],
        exit_index=2,
        policy="fixed",
        normalize_level=False,
      ).estimates[0],
      level * mixture,
    )
    for level in levels[[0, 4]]
  ]
  assert abs(raw[0] - raw[1]) > 0.01  # The network alone is level dependent.


def test_separate_long_reports_what_its_batches_ran_beyond_each_chunk(monkeypatch):
  from eesep_jax.app import cli  # pylint: disable=import-outside-toplevel

  config = models.preset("tiny")
  exits_in_order = iter([1, 3, 2, 2, 1])

  def fake_separate(variables, config, chunks, **kwargs):
    del variables, kwargs
    batch, time = chunks.shape
    exit_index = np.array([next(exits_in_order, 1) for _ in range(batch)], np.int32)
    return inference.SeparationResult(
      estimates=np.zeros((batch, config.num_sources, time), np.float32),
      exit_index=exit_index,
      probability=np.ones(batch, np.float32),
      gmacs=exit_index.astype(np.float32),
    )

  monkeypatch.setattr(inference, "separate", fake_separate)
  rate = config.sample_rate
  # Five 1 s chunks at a hop of 0.5 s, in batches of 3 and 2 (`chunk_batch=3`).
  result = inference.separate_long(
    None,
    config,
    np.zeros(3 * rate, np.float32),
    chunk_seconds=1.0,
    overlap_seconds=0.5,
    chunk_batch=3,
  )
  np.testing.assert_array_equal(result.exits.exit_index, [1, 3, 2, 2, 1])
  np.testing.assert_array_equal(result.exits.gmacs, [1, 3, 2, 2, 1])
  # Each batch runs every chunk of it to its deepest chunk's exit.
  np.testing.assert_array_equal(result.exits.executed_gmacs, [3, 3, 3, 2, 2])

  described = cli._describe(  # pylint: disable=protected-access
    dataclasses.make_dataclass("Result", ["path", "note", "exits", "gain", "outputs"])(
      "a.wav", None, dataclasses.replace(result.exits, full_depth_gmacs=15.0), 1.0, ["a_s1.wav"]
    ),
    15.0,
    3,
  )
  assert (
    "9 of 15 GMAC, 40% of the FLOPs saved (its batches of chunks ran 13 GMAC, "
    "13% saved: a batch runs until its last chunk stops)" in described
  )
