"""Cross-talk between a run's two estimates as a signal that separation failed, and a
variance that widens with it: does it make exit probabilities honest off home ground?

    python experiments/benchmarks/crosstalk_widening.py --run runs/demo \
        --set test= --set heldout=data/heldout --set kokoro=data/checks/kokoro \
        --set piper=data/checks/piper --set recorded=data/checks/recorded \
        --out experiments/benchmarks/results/crosstalk_widening.json

A failed separation leaves each speaker in both estimates, so the estimates correlate:
the cross-talk `ρ = |ŝ₁ᵀŝ₂| / (‖ŝ₁‖ ‖ŝ₂‖)` is observable without references. Leakage of
one source into the other bounds each estimate's SNR by about `−20 log10 ρ` (the
cross-talk ceiling). For each set this reports, per exit, the mean `ρ`, its
correlation with the worst source's SNR, and the share of utterances above the
ceiling; and, at the run's target `γ`, the last exit's mean `P(SNR ≥ γ)` against the
share reaching `γ`, and the probabilistic policy's early stops and satisfaction at
p = 0.8 and 0.9, under four variances:
- `raw`: the network's;
- `scalar`: per-exit scales on `β`, the post-hoc form `eesep calibrate` fits;
- `crosstalk`: `β ← β · exp(c_k + b ρ)`, per-exit `c_k` and one slope `b`;
- `scalar+ceiling`: `scalar`, with the probability set to 0 where the ceiling is
  below `γ`;
the fitted ones fitted by likelihood on the run's validation split (the demo's fit
data), so no set reported here tunes them. Utterances are cut to their first
`--seconds` (those shorter are left out), so every forward pass has one shape.
Needs a two-source run with a Student-t head and one variance per utterance (the
demo's).
"""

import argparse
import pathlib
import sys

import numpy as np
from scipy import optimize

from eesep_jax import data
from eesep_jax import runs
from eesep_jax.analysis import calibration
from eesep_jax.analysis import evaluate
from eesep_jax.core import probabilistic
from eesep_jax.training import checkpoints

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import corpus_breadth  # pylint: disable=g-import-not-at-top,wrong-import-position  (the sibling script)

CONFIDENCES = (0.8, 0.9)
VARIANCES = ("raw", "scalar", "crosstalk", "scalar+ceiling")


def exits_of_set(run, name, source, num_samples, max_utterances=None):
  """Every exit of each utterance's first `num_samples`: `{"estimates" [n, exits,
  sources, time], "alpha", "beta" [n, exits, sources], "energy" [n, exits, sources]
  (realised `‖s − ŝ‖²`), "snr_min" [n, exits]}`."""
  rows = []
  for index in range(len(source)):
    example = source[index]
    if example["mixture"].shape[-1] < num_samples:
      continue
    outputs = evaluate.exit_outputs(
      run.variables,
      run.model_config,
      example["mixture"][:num_samples],
      example["sources"][:, :num_samples],
    )
    estimates = np.asarray(outputs["estimates"])
    references = example["sources"][None, :, :num_samples]
    rows.append(
      {
        "estimates": estimates,
        "alpha": np.asarray(outputs["variance"]["alpha"])[..., 0],
        "beta": np.asarray(outputs["variance"]["beta"])[..., 0],
        "energy": np.sum((references - estimates) ** 2, axis=-1),
        "snr_min": np.asarray(outputs["snr_min"]),
      }
    )
    if len(rows) == max_utterances:
      break
  if not rows:
    raise SystemExit(f"{name}: no utterance lasts {num_samples} samples")
  return {name: np.stack([row[name] for row in rows]) for name in rows[0]}


def crosstalk(estimates):
  """`ρ` `[n, exits]` of estimates `[n, exits, 2, time]`."""
  first, second = estimates[:, :, 0], estimates[:, :, 1]
  norms = np.linalg.norm(first, axis=-1) * np.linalg.norm(second, axis=-1)
  return np.abs(np.sum(first * second, axis=-1)) / np.maximum(norms, 1e-12)


def _widened(outputs, log_scale):
  """`{"alpha", "beta"}` with `β` scaled by `exp(log_scale)` `[n, exits]`."""
  return {"alpha": outputs["alpha"], "beta": outputs["beta"] * np.exp(log_scale)[..., None]}


def fit_variances(outputs, num_samples):
  """`{name: log β scale [n, exits] as a function of outputs}` for `VARIANCES`' fitted
  ones, fitted on `outputs` by likelihood: `(c, b)` of `c_k + b ρ`."""

  def per_exit(slope):
    shifted = _widened(outputs, slope * crosstalk(outputs["estimates"]))
    scales = calibration.fit_posthoc(
      {k: np.moveaxis(v, 1, -1) for k, v in shifted.items()},
      np.moveaxis(outputs["energy"], 1, -1),
      num_samples,
    )
    return np.log(scales["beta_scale"])

  def nll(slope):
    log_scale = per_exit(slope) + slope * crosstalk(outputs["estimates"])
    params = _widened(outputs, log_scale)
    return float(np.mean(calibration.log_energy_nll(outputs["energy"], params, num_samples)))

  slope = optimize.minimize_scalar(nll, bounds=(-5.0, 5.0), method="bounded").x
  offsets, scalar = per_exit(slope), per_exit(0.0)
  return {
    "scalar": {"offsets": scalar.tolist(), "slope": 0.0},
    "crosstalk": {"offsets": offsets.tolist(), "slope": float(slope)},
  }


def probabilities(run, outputs, fit, target_snr_db, variance):
  """`P(SNR ≥ γ)` `[n, exits]` under one of `VARIANCES`."""
  rho = crosstalk(outputs["estimates"])
  chosen = {"raw": None, "scalar+ceiling": "scalar"}.get(variance, variance)
  log_scale = (
    np.zeros_like(rho)
    if chosen is None
    else np.asarray(fit[chosen]["offsets"]) + fit[chosen]["slope"] * rho
  )
  probability = np.asarray(
    probabilistic.exit_probability(
      outputs["estimates"],
      {
        name: value[..., None] for name, value in _widened(outputs, log_scale).items()
      },  # One block.
      target_snr_db,
      config=run.model_config.variance,
    )
  )
  if variance == "scalar+ceiling":
    probability = np.where(-20 * np.log10(rho) < target_snr_db, 0.0, probability)
  return probability


def policy(probability, snr_min, target_snr_db, confidence):
  """Early stops of the probabilistic policy and the share of them reaching `γ`."""
  num_exits = probability.shape[1]
  confident = np.concatenate(
    [probability[:, :-1] >= confidence, np.ones((len(probability), 1), bool)], axis=1
  )
  stops = np.argmax(confident, axis=1)
  early = stops < num_exits - 1
  reached = snr_min[np.arange(len(stops)), stops] >= target_snr_db
  return {
    "confidence": confidence,
    "stopped_early": int(early.sum()),
    "satisfaction": float(reached[early].mean()) if early.any() else None,
  }


def measure(run, outputs, fit, target_snr_db):
  rho = crosstalk(outputs["estimates"])
  snr_min = outputs["snr_min"]
  report = {
    "utterances": len(rho),
    "crosstalk_per_exit": rho.mean(axis=0).round(4).tolist(),
    "crosstalk_snr_correlation_per_exit": [
      float(np.corrcoef(rho[:, k], snr_min[:, k])[0, 1]) for k in range(rho.shape[1])
    ],
    "above_ceiling_per_exit": np.mean(snr_min > -20 * np.log10(rho), axis=0).tolist(),
    "last_exit_reached_share": float(np.mean(snr_min[:, -1] >= target_snr_db)),
  }
  for variance in VARIANCES:
    probability = probabilities(run, outputs, fit, target_snr_db, variance)
    report[variance] = {
      "last_exit_mean_probability": float(probability[:, -1].mean()),
      "policies": [policy(probability, snr_min, target_snr_db, p) for p in CONFIDENCES],
    }
  return report


def markdown(results):
  lines = [
    "| set | utt. | ρ, last exit | corr(ρ, SNR) | above ceiling | share reaching γ | "
    + " | ".join(f"{v}: P̄; p=0.8, p=0.9 early (satisfied)" for v in VARIANCES)
    + " |",
    "|---|---|---|---|---|---|" + "---|" * len(VARIANCES),
  ]
  for name, row in results["sets"].items():
    cells = []
    for variance in VARIANCES:
      stops = ", ".join(
        f"{p['stopped_early']}"
        + ("" if p["satisfaction"] is None else f" ({100 * p['satisfaction']:.0f}%)")
        for p in row[variance]["policies"]
      )
      cells.append(f"{row[variance]['last_exit_mean_probability']:.2f}; {stops}")
    lines.append(
      f"| {name} | {row['utterances']} | {row['crosstalk_per_exit'][-1]:.2f} | "
      f"{row['crosstalk_snr_correlation_per_exit'][-1]:.2f} | "
      f"{100 * (1 - row['above_ceiling_per_exit'][-1]):.0f}% hold | "
      f"{row['last_exit_reached_share']:.2f} | " + " | ".join(cells) + " |"
    )
  return "\n".join(lines)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--run", required=True, help="a training workdir")
  parser.add_argument(
    "--set", action="append", required=True, help="NAME=ROOT (an empty ROOT: the run's test split)"
  )
  parser.add_argument("--seconds", type=float, default=1.5, help="utterances cut to (default 1.5)")
  parser.add_argument("--max-utterances", type=int, default=None)
  parser.add_argument("--out", help="a .json file; the table goes beside it as .md")
  args = parser.parse_args(argv)

  config = checkpoints.read_config(args.run)
  run = runs.load(args.run)
  variance = run.model_config.variance
  if (
    run.model_config.num_sources != 2
    or not variance.parameterisation.startswith("student")
    or variance.block_length is not None
  ):
    raise SystemExit(f"{args.run}: needs two sources and a Student-t head with one variance")
  num_samples = int(args.seconds * int(config.model.sample_rate))
  target = config.inference.target_snr_db

  def opened(root, split):
    if not root:
      return data.open_split(config, split)
    return data.open_dataset(
      "wsj0-mix", root, "tt", sample_rate=int(config.model.sample_rate), num_sources=2
    )

  fit_outputs = exits_of_set(
    run, "validation", opened("", config.data.valid_split), num_samples, args.max_utterances
  )
  fit = fit_variances(fit_outputs, num_samples)
  results = {"run": str(args.run), "target_snr_db": target, "seconds": args.seconds, "fit": fit}
  results["sets"] = {"validation (fit)": measure(run, fit_outputs, fit, target)}
  for name, root in corpus_breadth.pairs(args.set, "set"):
    outputs = exits_of_set(
      run, name, opened(root, config.data.test_split), num_samples, args.max_utterances
    )
    results["sets"][name] = measure(run, outputs, fit, target)
  table = markdown(results)
  print(table)
  if args.out:
    corpus_breadth.write_results(args.out, results, table)
  return results


if __name__ == "__main__":
  main()
