"""Accuracy of the block-variance exit probability against a Monte Carlo of the model.

    python experiments/benchmarks/block_probability_accuracy.py [--draws 200000]

With variance blocks the exit probability is `P(Σ_b E_b ≤ c)` for independent block
error energies, `E_b = σ_b² χ²_{T_b}` with `σ_b² ~ InvGamma(α_b, β_b)` (Student-t) or
`σ_b²` given (Gaussian). For each case, `--draws` draws of that sum (numpy, the cross
term dropped as in docs/method.md §4) give its 0.9, 0.95 and 0.99 quantiles; `c` is set at
each, so the true probability is the level, and the implementation is asked for it.
"old" is `eesep_jax/probabilistic.py` at `OLD_COMMIT` (quantile pooling with the χ²
factor dropped; Satterthwaite for Gaussian blocks), read with `git show`; "new" is
this checkout's. Prints a Markdown table (float32, as deployed). About a minute on two
CPU cores.
"""

import argparse
import importlib.util
import pathlib
import subprocess
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from eesep_jax.core import probabilistic  # noqa: E402  # pylint: disable=wrong-import-position

OLD_COMMIT = "b01124e"
LEVELS = (0.9, 0.95, 0.99)
GAMMA_DB = 10.0
# (label, blocks, samples per block, α per block or None for Gaussian, β or σ² per block).
CASES = (
  ("8 × 4000, α = 3", 8, 4000, 3.0, 0.02),
  ("10 × 400, α = 200", 10, 400, 200.0, 0.5),
  ("2 × 16000, α = 1.01", 2, 16000, 1.01, 0.003),
  ("40 × 400, α = 10³", 40, 400, 1e3, 10.0),
  (
    "40 × 400, α from 1.01 to 10³, β from 10⁻³ to 1",
    40,
    400,
    np.geomspace(1.01, 1e3, 40),
    np.geomspace(1e-3, 1.0, 40),
  ),
  ("8 × 4000, Gaussian", 8, 4000, None, 0.01),
  ("40 × 400, Gaussian, σ² from 10⁻³ to 1", 40, 400, None, np.geomspace(1e-3, 1.0, 40)),
)


def old_module():
  """`probabilistic` as it was at `OLD_COMMIT`."""
  source = subprocess.run(
    ["git", "-C", str(REPO), "show", f"{OLD_COMMIT}:eesep_jax/probabilistic.py"],
    capture_output=True,
    text=True,
    check=True,
  ).stdout
  path = pathlib.Path(tempfile.mkdtemp()) / "probabilistic_old.py"
  path.write_text(source)
  spec = importlib.util.spec_from_file_location("probabilistic_old", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def monte_carlo(blocks, samples, alpha, scale, draws, seed=0):
  """`[draws]` total error energies: σ_b² drawn, then `σ_b² χ²_{T_b}` per block."""
  rng = np.random.default_rng(seed)
  scale = np.broadcast_to(scale, (blocks,))
  if alpha is None:
    variance = np.broadcast_to(scale, (draws, blocks))
  else:
    variance = scale / rng.gamma(np.broadcast_to(alpha, (blocks,)), size=(draws, blocks))
  return np.sum(variance * rng.chisquare(samples, (draws, blocks)), axis=1)


def probabilities(module, thresholds, blocks, samples, alpha, scale):
  """`module`'s `P(SNR ≥ γ)` at error-energy thresholds `c` `[levels]`, float32."""
  time = blocks * samples
  signal = np.asarray(thresholds) * (10 ** (GAMMA_DB / 10) - 1)
  shape = (len(thresholds), blocks)
  scale = jnp.asarray(np.broadcast_to(scale, shape), jnp.float32)
  if hasattr(module, "snr_exceedance"):  # This checkout: from energies and block counts.
    params = (
      {"variance": scale}
      if alpha is None
      else {"alpha": jnp.asarray(np.broadcast_to(alpha, shape), jnp.float32), "beta": scale}
    )
    function = jax.jit(lambda s, p: module.snr_exceedance(s, p, GAMMA_DB, np.full(blocks, samples)))
    return np.asarray(function(jnp.asarray(signal, jnp.float32), params))
  estimate = jnp.asarray(np.sqrt(signal / time)[:, None] * np.ones((1, time)), jnp.float32)
  if alpha is None:
    function = jax.jit(
      lambda e, v: module.gaussian_snr_exceedance_probability(e, v, GAMMA_DB, block_length=samples)
    )
    return np.asarray(function(estimate, scale))
  function = jax.jit(
    lambda e, a, b: module.snr_exceedance_probability(e, a, b, GAMMA_DB, block_length=samples)
  )
  return np.asarray(
    function(estimate, jnp.asarray(np.broadcast_to(alpha, shape), jnp.float32), scale)
  )


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--draws", type=int, default=200_000, help="Monte Carlo draws per case")
  args = parser.parse_args()
  old = old_module()
  print(
    f"| blocks × samples, α | true P (Monte Carlo, {args.draws} draws) | "
    f"old ({OLD_COMMIT}) | new | largest error old → new |"
  )
  print("|---|---|---|---|---|")
  for label, blocks, samples, alpha, scale in CASES:
    energy = monte_carlo(blocks, samples, alpha, scale, args.draws)
    thresholds = np.quantile(energy, LEVELS)
    # The share of draws at or below each threshold: the level, up to ties.
    truth = np.mean(energy[:, None] <= thresholds, axis=0)
    before = probabilities(old, thresholds, blocks, samples, alpha, scale)
    after = probabilities(probabilistic, thresholds, blocks, samples, alpha, scale)

    def row(values):
      return " / ".join(f"{v:.3f}" for v in values)

    print(
      f"| {label} | {row(truth)} | {row(before)} | {row(after)} | "
      f"{np.max(np.abs(before - truth)):.3f} → {np.max(np.abs(after - truth)):.4f} |"
    )


if __name__ == "__main__":
  main()
