"""Corpus breadth: how trained runs separate, and how honest their exits are, on sets
of speech they never heard.

    python experiments/benchmarks/corpus_breadth.py \
        --run base=runs/base --run broad=runs/demo \
        --set test= --set kokoro=data/checks/kokoro --set recorded=data/checks/recorded \
        --out experiments/benchmarks/results/corpus_breadth.json

For every run and set it reads (or, when missing, writes with `eesep evaluate`)
`RUN/eval_<set>/exit_table.npz` (an empty set root is the run's own test split),
and reports the following; with `--steps 3500,7000`, the same for each run's
checkpoints of those steps (`RUN/eval_<set>_step<N>/`, without post-hoc scales):
- SI-SNRi per exit;
- honesty at the run's target `γ` (`config.inference.target_snr_db`), at its
  confidence `p` and at p = 0.8: how many utterances the probabilistic policy stops
  before the last exit and the share of them that reach `γ` (asked: ≥ p − 0.1);
- the last exit's mean `P(SNR ≥ γ)` beside the share whose worst source reaches `γ`
  there (asked: within 0.1), at the run's `γ` and, in a second table, at each of
  `--targets` the evaluation computed probabilities for.
Probabilities are as `eesep evaluate` reads them: with the run's post-hoc scales,
if `eesep calibrate` saved any.
"""

import argparse
import json
import pathlib
import subprocess
import sys

import numpy as np

from eesep_jax.analysis import evaluate
from eesep_jax.analysis import exit_table
from eesep_jax.analysis import operating_points
from eesep_jax.training import checkpoints

EXTRA_CONFIDENCE = 0.8
TARGETS_DB = (2.0, 3.0, 4.0, 5.0, 6.0)  # The second table's, where the demo's sets differ.


def evaluation_table(workdir, name, root, max_utterances=None, step=None):
  """`RUN/eval_<name>/exit_table.npz` (`eval_<name>_step<step>` for checkpoint `step`),
  made by `eesep evaluate` if missing."""
  out = pathlib.Path(workdir) / (f"eval_{name}" if step is None else f"eval_{name}_step{step}")
  path = out / "exit_table.npz"
  if not path.exists():
    command = [
      sys.executable,
      "-m",
      "eesep_jax",
      "evaluate",
      "--checkpoint",
      str(workdir),
      "--out",
      str(out),
    ]
    if root:
      command += ["--data-root", str(root)]
    if max_utterances:
      command += ["--max-utterances", str(max_utterances)]
    if step is not None:
      # Post-hoc scales are fitted on one checkpoint: another step's probabilities are raw.
      command += ["--step", str(step), "--no-posthoc"]
    subprocess.run(command, check=True)
  return exit_table.load(path)


def evaluation_folder(folder):
  """`(exit table, compute per exit [exits])` of a folder `eesep evaluate` wrote."""
  folder = pathlib.Path(folder)
  report = json.loads((folder / evaluate.JSON_FILE).read_text())
  cost = np.asarray(report["gmacs_per_second_by_exit"], np.float64)
  return exit_table.load(folder / evaluate.TABLE_FILE), cost


def early_stops(exits, snr_min, target_snr_db, confidence):
  """Of 1-based `exits` `[utterances]` taken at confidence `p`: how many stop before the
  last exit, and the share of those whose worst source (`snr_min` `[utterances,
  exits]`) reaches `γ` (None when none stops early)."""
  early = exits < snr_min.shape[1]
  reached = snr_min[np.arange(len(exits)), exits - 1] >= target_snr_db
  return {
    "confidence": confidence,
    "stopped_early": int(early.sum()),
    "satisfaction": float(reached[early].mean()) if early.any() else None,
  }


def honesty(table, target_snr_db, confidence):
  """The probabilistic policy's early stops at `(γ, p)` (`early_stops`)."""
  exits = operating_points.policy_exits(
    table, "probabilistic", target_snr_db=target_snr_db, confidence=confidence
  )
  return early_stops(exits, table.snr_min, target_snr_db, confidence)


def last_exit_promise(table, target_snr_db):
  """`(mean P(SNR ≥ γ), share reaching γ)` at the last exit."""
  last_probability = table.probability[:, -1, table.target_index(target_snr_db)]
  return float(last_probability.mean()), float(np.mean(table.snr_min[:, -1] >= target_snr_db))


def measure(table, target_snr_db, confidence, targets=TARGETS_DB):
  """The report of one run on one set (see the module docstring)."""
  mean_probability, reached_share = last_exit_promise(table, target_snr_db)
  return {
    "utterances": len(table.ids),
    "si_snri_per_exit": [round(float(v), 3) for v in table.si_snri.mean(axis=0)],
    "target_snr_db": target_snr_db,
    "honesty": [honesty(table, target_snr_db, p) for p in sorted({confidence, EXTRA_CONFIDENCE})],
    "last_exit_mean_probability": mean_probability,
    "last_exit_reached_share": reached_share,
    "last_exit_by_target": {
      f"{target:g}": dict(
        zip(("mean_probability", "reached_share"), last_exit_promise(table, target))
      )
      for target in targets
      if target in table.targets_db
    },
  }


def markdown(results):
  lines = [
    "| run | set | utt. | SI-SNRi per exit (dB) | early stops: share reaching γ "
    "(count), per p | last exit: mean P(SNR ≥ γ) / share reaching γ |",
    "|---|---|---|---|---|---|",
  ]
  for run, sets in results.items():
    for name, row in sets.items():
      exits = " / ".join(f"{v:.2f}" for v in row["si_snri_per_exit"])
      stops = "; ".join(
        f"p={h['confidence']:g}: "
        + (
          "none"
          if h["satisfaction"] is None
          else f"{100 * h['satisfaction']:.0f}% ({h['stopped_early']})"
        )
        for h in row["honesty"]
      )
      lines.append(
        f"| {run} | {name} | {row['utterances']} | {exits} | {stops} | "
        f"{row['last_exit_mean_probability']:.2f} / "
        f"{row['last_exit_reached_share']:.2f} (γ = {row['target_snr_db']:g} dB) |"
      )
  targets = list(
    dict.fromkeys(
      t for sets in results.values() for row in sets.values() for t in row["last_exit_by_target"]
    )
  )
  lines += [
    "",
    "Last exit: mean P(SNR ≥ γ) / share reaching γ, per γ",
    "",
    "| run | set | " + " | ".join(f"{t} dB" for t in targets) + " |",
    "|---|---|" + "---|" * len(targets),
  ]
  for run, sets in results.items():
    for name, row in sets.items():
      cells = [row["last_exit_by_target"].get(t) for t in targets]
      lines.append(
        f"| {run} | {name} | "
        + " | ".join(
          "–" if c is None else f"{c['mean_probability']:.2f} / {c['reached_share']:.2f}"
          for c in cells
        )
        + " |"
      )
  return "\n".join(lines)


def write_results(out, results, table):
  """`results` as JSON at `out`, and the markdown `table` beside it as .md."""
  out = pathlib.Path(out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(results, indent=2) + "\n")
  out.with_suffix(".md").write_text(table + "\n")


def pairs(values, what):
  """`[(NAME, VALUE)]` of `--what NAME=VALUE` options."""
  parsed = []
  for value in values:
    if "=" not in value:
      raise SystemExit(f"--{what} {value!r}: expected NAME=PATH")
    parsed.append(tuple(value.split("=", 1)))
  return parsed


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--run", action="append", required=True, help="NAME=WORKDIR")
  parser.add_argument(
    "--set",
    action="append",
    required=True,
    help="NAME=ROOT (an empty ROOT: the run's own test split)",
  )
  parser.add_argument("--max-utterances", type=int, default=None)
  parser.add_argument(
    "--targets",
    type=lambda text: tuple(float(target) for target in text.split(",")),
    default=TARGETS_DB,
    help="targets in dB of the per-γ honesty table (default: %(default)s)",
  )
  parser.add_argument(
    "--steps",
    type=lambda text: [int(step) for step in text.split(",")],
    help="evaluate each run's checkpoints of these training steps (rows NAME@STEP, "
    "uncalibrated) instead of its best checkpoint",
  )
  parser.add_argument("--out", help="a .json file; the table goes beside it as .md")
  args = parser.parse_args(argv)
  results = {}
  for run, workdir in pairs(args.run, "run"):
    config = checkpoints.read_config(workdir)
    target, confidence = config.inference.target_snr_db, config.inference.confidence
    for step in args.steps or [None]:
      results[run if step is None else f"{run}@{step}"] = {
        name: measure(
          evaluation_table(workdir, name, root, args.max_utterances, step),
          target,
          confidence,
          args.targets,
        )
        for name, root in pairs(args.set, "set")
      }
  table = markdown(results)
  print(table)
  if args.out:
    write_results(args.out, results, table)
  return results


if __name__ == "__main__":
  main()
