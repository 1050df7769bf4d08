"""The quickstart job behind `make demo`: corpus, training, calibration, evaluation.

    eesep demo --workdir runs/demo

1. builds the embedded corpus under `data/demo` (eSpeak NG and Piper speakers), the
   held-out test set of other languages' voices under `data/heldout`, and the check
   sets of speech no corpus trains on under `data/checks` (`config.data.check_sets`:
   Kokoro-82M's voices, a recorded voice; `data.checksets`), if they are missing;
2. trains `eesep_jax/configs/demo.py` (shipped in the package: `eesep train --config
   demo`) in `WORKDIR`, resuming if a run is there;
3. chooses the target as a user would, on the validation split: a whole dB that exit
   1 reaches for 30-70% of utterances and full depth for clearly more
   (`operating_points.choose_target`; the config's `inference.target_snr_db` when
   none qualifies);
4. fits post-hoc calibration of the exit probabilities on the validation split and
   reports calibration on the test split (`WORKDIR/calibration/`);
5. evaluates every exit and every stopping policy, calibrated, on the test split
   (`WORKDIR/evaluation/`), on the held-out voices (`WORKDIR/evaluation_heldout/`) and
   on each check set (`WORKDIR/evaluation_<name>/`), with the figures of reach against
   compute and of satisfaction against `p`;
6. separates one test mixture into `WORKDIR/separated/`;

then prints SI-SNRi per exit on every set and, at the chosen target and the config's
confidence (`config.inference.confidence`), on every set: the reach of the policy, of
full depth and of exit 1, the compute saved and the oracle's, the satisfaction and
SI-SNRi, with 95% intervals.
"""

import dataclasses
import pathlib
import time

import numpy as np

from eesep_jax import config_lib
from eesep_jax import data
from eesep_jax import runs
from eesep_jax.analysis import calibration_report
from eesep_jax.analysis import evaluate
from eesep_jax.analysis import exit_table
from eesep_jax.analysis import operating_points
from eesep_jax.app import separate_files
from eesep_jax.training import train

# Shipped inside the package, so that `eesep demo` runs from any directory.
DEMO_CONFIG = config_lib.PACKAGED_CONFIGS / "demo.py"


def _per_exit_lines(name, summary):
  per_exit = summary["per_exit"]
  cells = "".join(f"{row['si_snri']:8.2f}" for row in per_exit)
  return f"  {name:<28}{cells}"


def _share(points, name, i, q):
  """`80% [75-84%]`: a share and its interval."""
  value, low, high = (points[f"{name}{end}"][i, q] for end in ("", "_low", "_high"))
  return f"{100 * value:.0f}% [{100 * low:.0f}-{100 * high:.0f}%]"


def _stopping_cells(summary, target_snr_db, confidence):
  """What the demo prints of one evaluation at its default `(γ, p)`: `{row: cell}`."""
  points = operating_points.from_json(summary["operating_points"])
  values = {field.name: getattr(points, field.name) for field in dataclasses.fields(points)}
  i = points.target_index(target_snr_db)
  q = points.column("probabilistic", confidence)
  first, full, oracle = (
    points.column("fixed", 1),
    points.column("fixed", -1),
    points.column("oracle"),
  )
  early = points.stopped_early[i, q]
  return {
    "reach, the policy": _share(values, "reach", i, q),
    "reach, full depth": _share(values, "reach", i, full),
    "reach, exit 1": _share(values, "reach", i, first),
    "compute saved": f"{100 * points.saved[i, q]:.0f}% (oracle {100 * points.saved[i, oracle]:.0f}%)",
    "share of the oracle's saving": (
      _share(values, "oracle_share", i, q) if np.isfinite(points.oracle_share[i, q]) else "–"
    ),
    "satisfaction": (
      f"{_share(values, 'satisfaction', i, q)} of {early}" if early else "none stopped early"
    ),
    # What the exit probabilities promise, against what happens: honest when they agree.
    "mean P, full depth": (
      f"{summary['per_exit'][-1][exit_table.probability_column(target_snr_db)]:.2f} "
      f"({100 * points.reach[i, full]:.0f}% reach γ)"
    ),
    "SI-SNRi (full depth)": (
      f"{points.means['si_snri'][i, q]:.2f} dB ({points.means['si_snri'][i, full]:.2f})"
    ),
  }


def _stopping_lines(summaries, target_snr_db, confidence):
  """A table of the policy's reach, compute, satisfaction and quality at the demo's
  `(γ, p)`, a column per evaluated set."""
  cells = {
    name: _stopping_cells(summary, target_snr_db, confidence) for name, summary in summaries.items()
  }
  lines = [
    f"Stopping at P(SNR >= {target_snr_db:g} dB) >= {confidence:g} (calibrated on "
    "the validation split; 95% intervals):",
    (f"  {'':<30}" + "".join(f"{name:<32}" for name in summaries)).rstrip(),
  ]
  for row in next(iter(cells.values())):
    lines.append((f"  {row:<30}" + "".join(f"{cell[row]:<32}" for cell in cells.values())).rstrip())
  return lines


def _grid(config, target_snr_db):
  """The reports' grid: the config's (`config.evaluation`), with the demo's target and
  its confidence (`config.inference`)."""
  return {
    "targets": sorted({*config.evaluation.targets_db, target_snr_db}),
    "confidences": sorted({*config.evaluation.confidences, config.inference.confidence}),
  }


def choose_target(variables, model_config, source):
  """The demo's target, chosen as a user would on `source` (the validation split):
  `operating_points.choose_target` of its exits' worst-source SNRs. Returns `(γ,
  reach [exits])`."""
  table, _ = evaluate.evaluate_model(
    variables, model_config, source, policies=(), span=False, enhancement_metrics=False
  )
  return operating_points.choose_target(table.snr_min)


def _evaluate(variables, model_config, source, out_dir, scales, config, target_snr_db):
  table, summary = evaluate.evaluate_model(
    variables,
    model_config,
    source,
    posthoc_scales=scales,
    target_snr_db=target_snr_db,
    confidence=config.inference.confidence,
    enhancement_metrics=False,
    **_grid(config, target_snr_db),
  )
  return table, summary, evaluate.write_report(out_dir, table, summary)


def _set_label(name, summary):
  """A report set's row label: "test split (300 utt.)", "kokoro check (300 utt.)"."""
  kind = {data.TEST_SET: "test split", data.HELDOUT_SET: "held-out voices"}.get(name)
  return f"{kind or name + ' check'} ({summary['num_utterances']} utt.)"


def main(workdir="runs/demo", config_path=DEMO_CONFIG, overrides=()):
  """Runs the demo end to end; returns the test split's evaluation summary."""
  start = time.monotonic()
  workdir = pathlib.Path(workdir)
  config = config_lib.load_config(config_path, overrides)
  confidence = config.inference.confidence
  report_configs = data.report_configs(config)

  print(
    "[1/6] corpus and report sets: "
    + ", ".join(f"{name} {c.data.root}" for name, c in report_configs.items())
  )
  data.ensure_report_sets(config)
  print(f"[2/6] training {config_path} for {config.steps} steps in {workdir}")
  train.train_and_evaluate(config, workdir)

  print("[3/6] choosing the target on the validation split")
  run = runs.load(workdir)
  model_config, variables = run.model_config, run.variables
  try:
    target_snr_db, reach = choose_target(
      variables, model_config, data.open_split(config, config.data.valid_split)
    )
    chosen = (
      f"target {target_snr_db:g} dB: exit 1 reaches it for {100 * reach[0]:.0f}% "
      f"of validation utterances, full depth for {100 * reach[-1]:.0f}%"
    )
  except ValueError as error:  # A model whose exits do not differ: the config's target.
    target_snr_db = config.inference.target_snr_db
    chosen = f"target {target_snr_db:g} dB (config.inference): {error}"
  print(f"  {chosen}")

  print("[4/6] fitting post-hoc calibration on the validation split")
  calibration_report.calibrate_checkpoint(
    workdir,
    workdir / "calibration",
    config=config,
    target_snr_db=target_snr_db,
    **_grid(config, target_snr_db),
  )
  scales = run.posthoc_scales  # Read on first use: the scales just saved.

  print("[5/6] evaluating every exit and stopping policy (test split, held-out voices, check sets)")
  sources = {
    name: data.open_split(set_config, config.data.test_split)
    for name, set_config in report_configs.items()
  }
  summaries, paths = {}, {}
  for name, source in sources.items():
    _, summaries[name], paths[name] = _evaluate(
      variables,
      model_config,
      source,
      workdir / ("evaluation" if name == data.TEST_SET else f"evaluation_{name}"),
      scales,
      config,
      target_snr_db,
    )
  summary, test_paths = summaries[data.TEST_SET], paths[data.TEST_SET]

  print("[6/6] separating one test mixture")
  mixture_path = sources[data.TEST_SET].entry(0).mixture
  [result] = separate_files.separate_files(
    [mixture_path],
    variables=variables,
    config=model_config,
    out_dir=workdir / "separated",
    overwrite=True,
    target_snr_db=target_snr_db,
    confidence=confidence,
    posthoc_scales=scales,
  )
  if result.error:
    raise RuntimeError(result.error)

  exits = "".join(f"  exit {k}" for k in range(1, model_config.num_exits + 1))
  gmacs = "".join(f"{row['gmacs_per_second']:8.2f}" for row in summary["per_exit"])
  labelled = {_set_label(name, set_summary): set_summary for name, set_summary in summaries.items()}
  print(
    "\n".join(
      [
        "",
        f"{'SI-SNRi per exit (dB)':<30}{exits}",
        *(_per_exit_lines(label, set_summary) for label, set_summary in labelled.items()),
        f"  {'GMAC per second of audio':<28}{gmacs}",
        f"The {chosen}.",
        *_stopping_lines(labelled, target_snr_db, confidence),
        f"Separated {mixture_path} -> {', '.join(result.outputs)}",
        f"Reports: {test_paths['markdown']} (figures {test_paths['reach'].name}, "
        f"{test_paths['satisfaction'].name}), "
        f"{workdir / 'calibration'}, and the other sets' beside it",
        f"Demo finished in {(time.monotonic() - start) / 60:.1f} min.",
      ]
    )
  )
  return summary
