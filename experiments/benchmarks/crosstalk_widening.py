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
share reaching `γ` (also by bins of `ρ`, for `scalar`), and the probabilistic
policy's early stops and satisfaction at
p = 0.8 and 0.9, under these variances:
- `raw`: the network's;
- `scalar`: per-exit scales on `β`, the post-hoc form `eesep calibrate` fits;
- `crosstalk`: `β ← β · exp(c_k + b ρ)`, per-exit `c_k` and one slope `b`;
- `scalar (Brier)`, `crosstalk (Brier)`: the same forms, fitted to the decision a
  user makes rather than to the error energies: by the Brier score of `P(SNR ≥ γ)`
  at the run's `γ`, over utterances and exits;
- `scalar+ceiling`: `scalar`, with the probability set to 0 where the ceiling is
  below `γ`.
Every fit is made on the run's validation split (the demo's fit data), `scalar` and
`crosstalk` by likelihood, so no set reported here tunes them. Utterances are cut to
their first `--seconds` (those shorter are left out), so every forward pass has one
shape.
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
from eesep_jax.core import stopping
from eesep_jax.training import checkpoints

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import corpus_breadth  # pylint: disable=g-import-not-at-top,wrong-import-position  (the sibling script)

CONFIDENCES = (0.8, 0.9)
CROSSTALK_BINS = (0.0, 0.4, 0.55, 1.0)  # Where the last exit's calibration is broken down.
VARIANCES = ("raw", "scalar", "crosstalk", "scalar (Brier)", "crosstalk (Brier)", "scalar+ceiling")


def exits_of_set(run, name, source, num_samples, max_utterances=None):
  """Every exit of each utterance's first `num_samples`: `{"estimates" [n, exits,
  sources, time], "alpha", "beta" [n, exits, sources], "energy" [n, exits, sources]
  (realised `‖s − ŝ‖²`), "signal" (`‖ŝ‖²`, the same shape), "snr_min" [n, exits]}`."""
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
        "signal": np.sum(estimates**2, axis=-1),
        "snr_min": np.asarray(outputs["snr_min"]),
      }
    )
    if len(rows) == max_utterances:
      break
  if not rows:
    raise SystemExit(f"{name}: no utterance lasts {num_samples} samples")
  return {name: np.stack([row[name] for row in rows]) for name in rows[0]}


def crosstalk(estimates):
  """`ρ` `[n, exits]` of estimates `[n, exits, 2, time]` (`probabilistic.crosstalk`)."""
  return np.asarray(probabilistic.crosstalk(estimates), np.float64)


def log_scale(outputs, fit):
  """`log` of the `β` scale `[n, exits]`: `c_k + b ρ` of `fit = {"offsets", "slope"}`."""
  return np.asarray(fit["offsets"]) + fit["slope"] * crosstalk(outputs["estimates"])


def _widened(outputs, fit):
  """`{"alpha", "beta"}` `[n, exits, sources]` with `β` scaled by `fit`."""
  return {
    "alpha": outputs["alpha"],
    "beta": outputs["beta"] * np.exp(log_scale(outputs, fit))[..., None],
  }


def probability(outputs, fit, target_snr_db, num_samples):
  """`P(worst source's SNR ≥ γ)` `[n, exits]` with `β` scaled by `fit`."""
  params = {name: value[..., None] for name, value in _widened(outputs, fit).items()}  # One block.
  per_source = probabilistic.snr_exceedance(
    outputs["signal"], params, target_snr_db, np.array([num_samples])
  )
  return np.min(np.asarray(per_source), axis=-1)


def nll(outputs, fit, num_samples):
  """Mean NLL of the realised error energies."""
  energy = outputs["energy"]
  return float(np.mean(calibration.log_energy_nll(energy, _widened(outputs, fit), num_samples)))


def fit_variances(outputs, target_snr_db, num_samples):
  """`{name: {"offsets": [exits], "slope"}}` of the fitted variances, on `outputs`:
  by likelihood (`calibration.fit_posthoc` per exit, the slope by a line search),
  and by the Brier score at `γ` (`calibration.fit_decision_posthoc`, what `eesep
  calibrate --method brier` fits, from the likelihood fits)."""
  num_exits = outputs["alpha"].shape[1]

  def by_likelihood(slope):
    shifted = _widened(outputs, {"offsets": np.zeros(num_exits), "slope": slope})
    scales = calibration.fit_posthoc(
      {k: np.moveaxis(v, 1, -1) for k, v in shifted.items()},
      np.moveaxis(outputs["energy"], 1, -1),
      num_samples,
    )
    return {"offsets": np.log(scales["beta_scale"]).tolist(), "slope": float(slope)}

  slope = optimize.minimize_scalar(
    lambda b: nll(outputs, by_likelihood(b), num_samples), bounds=(-5.0, 5.0), method="bounded"
  ).x
  fits = {"scalar": by_likelihood(0.0), "crosstalk": by_likelihood(slope)}

  def by_brier(start, with_slope):
    scales = calibration.fit_decision_posthoc(
      {"alpha": outputs["alpha"], "beta": outputs["beta"]},
      outputs["signal"],
      outputs["snr_min"],
      crosstalk(outputs["estimates"]),
      np.full(len(outputs["snr_min"]), num_samples),
      (target_snr_db,),
      start={"beta_scale": np.exp(start["offsets"]), "crosstalk_slope": start["slope"]},
      fit_slope=with_slope,
    )
    return {
      "offsets": np.log(scales["beta_scale"]).tolist(),
      "slope": float(scales["crosstalk_slope"][0]),
    }

  fits["scalar (Brier)"] = by_brier(fits["scalar"], with_slope=False)
  fits["crosstalk (Brier)"] = by_brier(fits["crosstalk"], with_slope=True)
  return fits


def ceiling_db(rho):
  """The cross-talk ceiling `−20 log10 ρ` on each estimate's SNR, in dB."""
  return -20 * np.log10(rho)


def predictions(outputs, fits, target_snr_db, num_samples):
  """`{variance: P(SNR ≥ γ) [n, exits]}` for every one of `VARIANCES`."""
  predicted = {
    "raw": probability(outputs, {"offsets": 0.0, "slope": 0.0}, target_snr_db, num_samples)
  }
  predicted.update(
    {name: probability(outputs, fit, target_snr_db, num_samples) for name, fit in fits.items()}
  )
  below = ceiling_db(crosstalk(outputs["estimates"])) < target_snr_db
  predicted["scalar+ceiling"] = np.where(below, 0.0, predicted["scalar"])
  return {variance: predicted[variance] for variance in VARIANCES}


def policy(probability, snr_min, target_snr_db, confidence):
  """Early stops of the probabilistic policy (`stopping`'s rule) and the share of them
  reaching `γ`."""
  rule = stopping.Policy(kind="probabilistic", target_snr_db=target_snr_db, confidence=confidence)
  exits = stopping.first_accepting_exit(stopping.accepts(rule, None, probability=probability))
  return corpus_breadth.early_stops(np.asarray(exits), snr_min, target_snr_db, confidence)


def measure(outputs, fits, target_snr_db, num_samples):
  rho = crosstalk(outputs["estimates"])
  snr_min = outputs["snr_min"]
  report = {
    "utterances": len(rho),
    "crosstalk_per_exit": rho.mean(axis=0).round(4).tolist(),
    "crosstalk_snr_correlation_per_exit": [
      float(np.corrcoef(rho[:, k], snr_min[:, k])[0, 1]) for k in range(rho.shape[1])
    ],
    "above_ceiling_per_exit": np.mean(snr_min > ceiling_db(rho), axis=0).tolist(),
    "last_exit_reached_share": float(np.mean(snr_min[:, -1] >= target_snr_db)),
  }
  predicted = predictions(outputs, fits, target_snr_db, num_samples)
  scalar = predicted["scalar"][:, -1]
  report["scalar_by_crosstalk"] = []
  for low, high in zip(CROSSTALK_BINS[:-1], CROSSTALK_BINS[1:]):
    chosen = (rho[:, -1] >= low) & (rho[:, -1] < high)
    report["scalar_by_crosstalk"].append(
      {
        "crosstalk": [low, high],
        "utterances": int(chosen.sum()),
        "mean_probability": float(scalar[chosen].mean()) if chosen.any() else None,
        "reached_share": float(np.mean(snr_min[chosen, -1] >= target_snr_db))
        if chosen.any()
        else None,
      }
    )
  for variance, probabilities in predicted.items():
    report[variance] = {
      "last_exit_mean_probability": float(probabilities[:, -1].mean()),
      "policies": [policy(probabilities, snr_min, target_snr_db, p) for p in CONFIDENCES],
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
  fits = fit_variances(fit_outputs, target, num_samples)
  results = {"run": str(args.run), "target_snr_db": target, "seconds": args.seconds, "fit": fits}
  results["sets"] = {"validation (fit)": measure(fit_outputs, fits, target, num_samples)}
  for name, root in corpus_breadth.pairs(args.set, "set"):
    outputs = exits_of_set(
      run, name, opened(root, config.data.test_split), num_samples, args.max_utterances
    )
    results["sets"][name] = measure(outputs, fits, target, num_samples)
  table = markdown(results)
  print(table)
  if args.out:
    corpus_breadth.write_results(args.out, results, table)
  return results


if __name__ == "__main__":
  main()
