"""Stopping for mean quality per compute rather than for a target: what any rule could
gain over the fixed exits, and what one rule does.

    python experiments/benchmarks/depth_gain.py --fit runs/demo/evaluation_cv \
        --eval test=runs/demo/evaluation --eval heldout=runs/demo/evaluation_heldout \
        --out experiments/benchmarks/results/depth_gain.json

Each folder is one `eesep evaluate` wrote (`--fit`: on the validation split, `eesep
evaluate --split cv`). A user who wants the best mean SI-SNRi for the compute spent
can always run a fixed exit, or a random mix of two: the static frontier
(`operating_points.static_frontier`). A rule that weighs what depth would still add
is worth keeping only if it gets more SI-SNRi than that frontier at the compute it
spends. Two measurements, on each `--eval` set:

- the **quality oracle**, which knows every exit's SI-SNRi and, for a price `λ` per
  GMAC/s, stops each utterance at the exit that maximises `SI-SNRi − λ · compute`
  (`quality_oracle`). No rule can beat the frontier by more than it does at the same
  compute: its gain bounds every depth-gain rule;
- **quit when hopeless** (`quit_when_hopeless`): stop at the first exit whose
  predicted worst-source SNR (`expected_snr_db`) is below a threshold. The utterances
  an exit separates worst gain least from depth, so those are the ones to stop. The
  threshold is the one that gains most over the frontier on the `--fit` set, among
  its exit-1 predictions' quantiles `THRESHOLD_QUANTILES`.

Gains over the frontier get paired bootstrap intervals over utterances
(`operating_points.bootstrap_weights`). A figure (`--out` with `.png`) draws SI-SNRi
against GMAC/s per set: the fixed exits and their frontier, the oracle over `λ`,
the rule over its thresholds, and the chosen threshold.
"""

import argparse
import pathlib
import sys

from matplotlib import figure
import numpy as np

from eesep_jax.analysis import operating_points

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import corpus_breadth  # pylint: disable=g-import-not-at-top,wrong-import-position  (the sibling script)

# Prices of compute for the quality oracle, in dB per GMAC/s of audio.
PRICES = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0)
THRESHOLD_QUANTILES = np.linspace(0.02, 0.6, 30)


def quality_oracle(si_snri, cost, price):
  """1-based exits `[utterances]` maximising `si_snri − price · cost` per utterance
  (`si_snri` `[utterances, exits]`, `cost` `[exits]`); ties go to the cheaper exit."""
  return np.argmax(si_snri - price * np.asarray(cost)[None, :], axis=1) + 1


def quit_when_hopeless(predicted_snr, threshold):
  """1-based exits `[utterances]`: the first exit before the last whose
  `predicted_snr` `[utterances, exits]` is below `threshold`, else the last."""
  hopeless = predicted_snr[:, :-1] < threshold
  return np.where(hopeless.any(axis=1), np.argmax(hopeless, axis=1) + 1, predicted_snr.shape[1])


def frontier_gain(si_snri, cost, exits, weights=None):
  """Mean SI-SNRi at 1-based `exits` minus the static frontier's at their mean compute,
  and that compute: `(gain, gmacs)`, each `[resamples]` for bootstrap `weights`
  `[resamples, utterances]` (None: the utterances as they are, scalars)."""
  mean = (
    (lambda x: x.mean(axis=-1))
    if weights is None
    else (lambda x: operating_points.bootstrap_means(weights, x))
  )
  gmacs = mean(cost[exits - 1])
  taken = mean(si_snri[np.arange(len(exits)), exits - 1])
  return taken - operating_points.static_frontier(cost, mean(si_snri.T), gmacs), gmacs


def measured(si_snri, cost, exits, weights):
  """A policy's compute, SI-SNRi and gain over the frontier with its interval."""
  gain, gmacs = frontier_gain(si_snri, cost, exits)
  low, high = operating_points.percentile_interval(frontier_gain(si_snri, cost, exits, weights)[0])
  return {
    "gmacs_per_second": float(gmacs),
    "saved": float(1 - gmacs / cost[-1]),
    "si_snri": float(si_snri[np.arange(len(exits)), exits - 1].mean()),
    "frontier_gain": float(gain),
    "frontier_gain_interval": [float(low), float(high)],
  }


def chosen_threshold(table, cost):
  """The threshold of `quit_when_hopeless` that gains most over the frontier on `table`."""
  candidates = np.quantile(table.expected_snr_db[:, 0], THRESHOLD_QUANTILES)
  gains = [
    frontier_gain(table.si_snri, cost, quit_when_hopeless(table.expected_snr_db, t))[0]
    for t in candidates
  ]
  return float(candidates[int(np.argmax(gains))])


def measure(table, cost, threshold, prices=PRICES):
  """The quality oracle at each price and the rule at `threshold`, on one set."""
  weights = operating_points.bootstrap_weights(len(table.ids))
  oracle = [
    {
      "price": price,
      **measured(table.si_snri, cost, quality_oracle(table.si_snri, cost, price), weights),
    }
    for price in prices
  ]
  rule = measured(
    table.si_snri, cost, quit_when_hopeless(table.expected_snr_db, threshold), weights
  )
  return {
    "utterances": len(table.ids),
    "si_snri_per_exit": table.si_snri.mean(axis=0).tolist(),
    "quality_oracle": oracle,
    "quit_when_hopeless": {"threshold_db": threshold, **rule},
  }


def _policy_point(table, cost, exits):
  """`(mean compute, mean SI-SNRi)` at 1-based `exits`."""
  return cost[exits - 1].mean(), table.si_snri[np.arange(len(exits)), exits - 1].mean()


def plot(tables, results, out):
  """SI-SNRi against GMAC/s, a panel per set (see the module docstring)."""
  fig = figure.Figure(figsize=(3.6 * len(tables), 3.4), layout="constrained")
  axes = fig.subplots(1, len(tables), squeeze=False)[0]
  for ax, (name, (table, cost)) in zip(axes, tables.items()):
    fixed = table.si_snri.mean(axis=0)
    budgets = np.linspace(cost[0], cost[-1], 200)
    ax.plot(cost, fixed, "s-", color="k", linewidth=0.8, label="fixed exits")
    frontier = operating_points.static_frontier(cost, fixed, budgets)
    ax.plot(budgets, frontier, "--", color="0.5", linewidth=1.0, label="static frontier")
    oracle = np.array(
      [_policy_point(table, cost, quality_oracle(table.si_snri, cost, p)) for p in PRICES]
    )
    ax.plot(*oracle.T, "*-", color="C3", label="quality oracle (over λ)")
    thresholds = np.quantile(table.expected_snr_db[:, 0], THRESHOLD_QUANTILES)
    rule = np.array(
      [_policy_point(table, cost, quit_when_hopeless(table.expected_snr_db, t)) for t in thresholds]
    )
    ax.plot(*rule.T, ".-", color="C0", linewidth=0.8, label="quit when hopeless (over τ)")
    chosen = results[name]["quit_when_hopeless"]
    ax.plot(
      chosen["gmacs_per_second"],
      chosen["si_snri"],
      "o",
      color="C0",
      markersize=8,
      fillstyle="none",
      label=f"τ = {chosen['threshold_db']:.1f} dB (fit set)",
    )
    ax.set(title=name, xlabel="GMAC/s")
  axes[0].set_ylabel("mean SI-SNRi (dB)")
  axes[0].legend(fontsize="x-small", loc="lower right")
  fig.savefig(out, dpi=120)


def markdown(results, threshold):
  lines = [
    f"Gain over the static frontier in mean SI-SNRi (dB), 95% paired bootstrap intervals; "
    f"quit when hopeless at τ = {threshold:.2f} dB (chosen on the fit set)",
    "",
    "| set | utt. | SI-SNRi per exit | quality oracle: largest gain (saved) | "
    "quit when hopeless: saved | its gain |",
    "|---|---|---|---|---|---|",
  ]
  for name, row in results.items():
    best = max(row["quality_oracle"], key=lambda o: o["frontier_gain"])
    rule = row["quit_when_hopeless"]
    low, high = rule["frontier_gain_interval"]
    lines.append(
      f"| {name} | {row['utterances']} | "
      + " / ".join(f"{v:.2f}" for v in row["si_snri_per_exit"])
      + f" | {best['frontier_gain']:+.3f} ({100 * best['saved']:.0f}%) | "
      f"{100 * rule['saved']:.0f}% | {rule['frontier_gain']:+.3f} [{low:+.3f}, {high:+.3f}] |"
    )
  return "\n".join(lines)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument(
    "--fit", required=True, help="the `eesep evaluate` folder the rule's threshold is chosen on"
  )
  parser.add_argument(
    "--eval", action="append", required=True, help="NAME=FOLDER that `eesep evaluate` wrote"
  )
  parser.add_argument(
    "--out", default=None, help="JSON results (a .md table and a .png figure beside them)"
  )
  args = parser.parse_args(argv)
  threshold = chosen_threshold(*corpus_breadth.evaluation_folder(args.fit))
  tables = {
    name: corpus_breadth.evaluation_folder(folder)
    for name, folder in corpus_breadth.pairs(args.eval, "eval")
  }
  results = {name: measure(table, cost, threshold) for name, (table, cost) in tables.items()}
  table_text = markdown(results, threshold)
  print(table_text)
  if args.out:
    corpus_breadth.write_results(args.out, {"fit": str(args.fit), "sets": results}, table_text)
    plot(tables, results, pathlib.Path(args.out).with_suffix(".png"))
  return results


if __name__ == "__main__":
  main()
