"""The stopping rule (`core.stopping`), the one definition the loop, evaluation and
calibration share, against a scan written out here."""

import numpy as np
import pytest

from eesep_jax.core import stopping


def _first_accepting_reference(accept):
  """1-based first accepting exit, else the last, by a loop over the exits."""
  taken = []
  for row in accept:
    taken.append(next((k + 1 for k, ok in enumerate(row[:-1]) if ok), len(row)))
  return np.array(taken)


def test_first_accepting_exit():
  p = np.array([[0.2, 0.9, 0.5], [0.95, 0.1, 0.1], [0.1, 0.2, 0.3]])
  np.testing.assert_array_equal(stopping.first_accepting_exit(p >= 0.8), [2, 1, 3])
  thresholds = np.array([1.0, 0.5, 0.0])[:, None, None]
  np.testing.assert_array_equal(
    stopping.first_accepting_exit(p >= thresholds), [[3, 3, 3], [2, 1, 3], [1, 1, 1]]
  )
  p = np.random.default_rng(10).uniform(size=(500, 4))
  for threshold in (0.3, 0.7, 0.99):
    np.testing.assert_array_equal(
      stopping.first_accepting_exit(p >= threshold), _first_accepting_reference(p >= threshold)
    )


def test_each_policy_reads_its_own_input():
  exits = np.arange(1, 4)
  probability = np.array([0.5, 0.95, 0.99])
  expected = np.array([8.0, 16.0, 20.0])
  oracle = np.array([12.0, 14.0, 30.0])
  inputs = dict(probability=probability, expected_snr_db=expected, oracle_snr_db=oracle)
  taken = {
    kind: int(
      stopping.first_accepting_exit(
        stopping.accepts(
          stopping.Policy(kind=kind, target_snr_db=15.0, confidence=0.9, exit_index=2),
          exits,
          **inputs,
        )
      )
    )
    for kind in stopping.POLICIES
  }
  assert taken == {"probabilistic": 2, "expected-snr": 2, "fixed": 2, "oracle": 3}


def test_policy_check_names_the_problem():
  with pytest.raises(ValueError, match="not one of"):
    stopping.Policy(kind="budget").check(3)
  with pytest.raises(ValueError, match="exit_index in 1..3"):
    stopping.Policy(kind="fixed", exit_index=4).check(3)
  with pytest.raises(ValueError, match="conditions"):
    stopping.Policy(conditions=("loudness",)).check(3)
