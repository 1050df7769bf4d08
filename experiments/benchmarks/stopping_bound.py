"""How much compute a recalibration of the exit probabilities could save at most: the
calibrated policy against the best per-exit thresholds, chosen in hindsight.

    python experiments/benchmarks/stopping_bound.py \
        --eval test=runs/demo/evaluation --eval heldout=runs/demo/evaluation_heldout \
        --targets 3,4,5,6 --confidences 0.8,0.9 \
        --out experiments/benchmarks/results/stopping_bound.json

Each `--eval` is a folder `eesep evaluate` wrote (its `exit_table.npz`, and the
compute per exit from its `evaluation.json`).

The probabilistic policy stops at the first exit whose `P(SNR ≥ γ) ≥ p`. Any
recalibration that keeps each exit's ordering of the utterances (a monotone map per
exit, whatever its form) amounts to a threshold `t_k` per exit: stop at exit `k` when
`P_k ≥ t_k`. Over every such set of thresholds, `best_thresholds` finds, on the table
itself, the one that saves the most compute while the early stops still reach `γ` at
a rate of at least `p`. Being fitted on the utterances it is scored on, it is an
optimistic bound. When even it saves little, what limits the saving is how well the
probabilities rank the utterances, not how they are calibrated: a sharper predictor
of the exits' SNR would pay, a better fit would not.

The same bound for the cross-talk between an exit's estimates alone
(`probabilistic.crosstalk`, lower ranks higher) says whether ranking by it would do
better. For reference, each row also gives the oracle's saving, which knows every
exit's SNR.
"""

import argparse
import pathlib
import sys

import numpy as np

from eesep_jax.analysis import operating_points

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import corpus_breadth  # pylint: disable=g-import-not-at-top,wrong-import-position  (the sibling script)

TARGETS_DB = (3.0, 4.0, 5.0, 6.0)
CONFIDENCES = (0.8, 0.9)


def saved_fraction(exits, cost):
  """`1 − mean compute / full depth's` of 1-based `exits` `[utterances]`."""
  return float(1.0 - np.mean(cost[exits - 1]) / cost[-1])


def best_thresholds(score, reached, cost, confidence):
  """The 1-based exit of every utterance under the per-exit thresholds on `score`
  that save the most compute while the early stops reach `γ` at a rate `≥ confidence`.

  Exhaustive over the thresholds that select different utterances (tied scores stop
  together), exit by exit: `utterances^(exits − 1)` candidates, so meant for a few
  exits.

  Args:
    score: `[utterances, exits]`, higher for an utterance more likely to reach `γ`.
    reached: `[utterances, exits]` bool, whether its worst source reaches `γ` there.
    cost: `[exits]` compute to reach each exit.
    confidence: the least share of early stops that must reach `γ`.

  Returns:
    `[utterances]` 1-based exits (all the last where no stop keeps the rate).
  """
  num_utterances, num_exits = score.shape
  best = {"saving": 0.0, "exits": np.full(num_utterances, num_exits)}

  def search(k, exits, stopped, successes, saving):
    running = np.flatnonzero(exits == num_exits)
    order = running[np.argsort(-score[running, k], kind="stable")]
    ranked = score[order, k]
    # Prefixes a threshold can select: the top m, where m ends a run of tied scores.
    ends = np.concatenate([[0], np.flatnonzero(np.diff(ranked) != 0) + 1, [len(order)]])
    hits = np.concatenate([[0], np.cumsum(reached[order, k])])[ends]
    gain = cost[-1] - cost[k]
    if k == num_exits - 2:  # The last decision: every prefix at once.
      feasible = successes + hits >= confidence * (stopped + ends) - 1e-9
      savings = np.where(feasible, saving + gain * ends, -np.inf)
      m = int(np.argmax(savings))
      if savings[m] > best["saving"]:
        best["saving"] = float(savings[m])
        best["exits"] = exits.copy()
        best["exits"][order[: ends[m]]] = k + 1
      return
    for end, hit in zip(ends, hits):
      taken = exits.copy()
      taken[order[:end]] = k + 1
      search(k + 1, taken, stopped + end, successes + hit, saving + gain * end)

  if num_exits > 1:
    search(0, best["exits"].copy(), 0, 0, 0.0)
  return best["exits"]


def measure(table, cost, target_snr_db, confidence):
  """The calibrated policy, the best thresholds on its probabilities and on the
  cross-talk, and the oracle, at `(γ, p)`: saved compute, early stops, satisfaction."""
  reached = table.snr_min >= target_snr_db
  policies = {
    "policy": operating_points.policy_exits(
      table, "probabilistic", target_snr_db=target_snr_db, confidence=confidence
    ),
    "best_thresholds_probability": best_thresholds(
      table.probability[..., table.target_index(target_snr_db)], reached, cost, confidence
    ),
    "oracle": operating_points.policy_exits(table, "oracle", target_snr_db=target_snr_db),
  }
  if table.crosstalk is not None:
    policies["best_thresholds_crosstalk"] = best_thresholds(
      -table.crosstalk, reached, cost, confidence
    )
  results = {}
  for name, exits in policies.items():
    stopped = corpus_breadth.early_stops(exits, table.snr_min, target_snr_db, confidence)
    results[name] = {
      "saved": saved_fraction(exits, cost),
      "stopped_early": stopped["stopped_early"],
      "satisfaction": stopped["satisfaction"],
      "exit_histogram": np.bincount(exits - 1, minlength=table.num_exits).tolist(),
    }
  return results


def markdown(results):
  columns = ("policy", "best_thresholds_probability", "best_thresholds_crosstalk", "oracle")
  lines = [
    "Compute saved; early stops and the share of them reaching γ",
    "",
    "| set | γ (dB) | p | calibrated policy | best thresholds on P | "
    "best thresholds on cross-talk | oracle |",
    "|---|---|---|---|---|---|---|",
  ]
  for name, rows in results.items():
    for row in rows:
      cells = []
      for column in columns:
        cell = row.get(column)
        if cell is None:
          cells.append("–")
        elif column == "oracle":
          cells.append(f"{100 * cell['saved']:.0f}%")
        else:
          share = cell["satisfaction"]
          reach = "–" if share is None else f"{100 * share:.0f}%"
          cells.append(f"{100 * cell['saved']:.0f}%; {cell['stopped_early']} ({reach})")
      lines.append(
        f"| {name} | {row['target_snr_db']:g} | {row['confidence']:g} | " + " | ".join(cells) + " |"
      )
  return "\n".join(lines)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument(
    "--eval", action="append", required=True, help="NAME=FOLDER that `eesep evaluate` wrote"
  )
  parser.add_argument(
    "--targets",
    type=lambda text: tuple(float(t) for t in text.split(",")),
    default=TARGETS_DB,
    help="targets in dB (default: %(default)s); each must be among the evaluation's",
  )
  parser.add_argument(
    "--confidences",
    type=lambda text: tuple(float(p) for p in text.split(",")),
    default=CONFIDENCES,
    help="confidences p (default: %(default)s)",
  )
  parser.add_argument("--out", default=None, help="JSON results (and a .md table beside them)")
  args = parser.parse_args(argv)
  results = {}
  for name, folder in corpus_breadth.pairs(args.eval, "eval"):
    table, cost = corpus_breadth.evaluation_folder(folder)
    missing = [t for t in args.targets if t not in table.targets_db]
    if missing:
      raise SystemExit(
        f"{folder}: no probabilities at {missing} dB "
        f"(it has {[float(t) for t in table.targets_db]})"
      )
    results[name] = [
      {"target_snr_db": target, "confidence": p, **measure(table, cost, target, p)}
      for target in args.targets
      for p in args.confidences
    ]
  table_text = markdown(results)
  print(table_text)
  if args.out:
    corpus_breadth.write_results(args.out, results, table_text)
  return results


if __name__ == "__main__":
  main()
