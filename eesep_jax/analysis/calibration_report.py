"""Calibration report of evaluated exits: what `eesep calibrate` computes and writes.

    table, summary = evaluate.evaluate_model(variables, config, source)
    # Or a saved one: table = exit_table.load("runs/demo/evaluation/exit_table.npz").
    report = calibration_report(table, gmacs_per_second=summary["gmacs_per_second_by_exit"])

The measures of docs/method.md §5 (`calibration`), over an evaluation's exit table
(`exit_table.ExitTable`), per exit and pooled over exits, for a grid of targets `γ`:

- per source, the unit the variance head predicts for: reliability and ECE of
  `P(SNR ≥ γ)` (the "snr" condition, `probabilistic.snr_exceedance`) against the source's
  realised SNR; PIT values, their histogram and KS distance; CRPS of the predicted SNR;
  NLL of the error energy; sharpness;
- per utterance, the unit a stopping policy acts on: the probabilistic policy stops at
  the first exit where the worst source's `P(SNR ≥ γ)` (how
  `probabilistic.exit_probability` combines sources) reaches `p`. The Brier score of
  that probability against the worst source reaching `γ` measures it at every exit
  (what `--method brier` fits). Target satisfaction
  is the share of the utterances that stopped so (not those that ran out of exits and
  took the last one) whose worst source's SNR (`snr_min`) reaches `γ`, with a
  Clopper–Pearson interval; with the compute and SI-SNRi at the exits taken, the
  policy's trade-off.

Post-hoc scales change the variance parameters only, never the estimates, so the
calibrated measures come from the recorded parameters with the scales applied
(`probabilistic.apply_posthoc`, as `evaluate` and `separate` apply them), without running
the network again. Only one variance block per utterance (`block_length` None) is
supported, as in `calibration`.

`calibrate` works in the regime `separate` deploys: utterances cut into the chunks
`inference.separate_long` separates on their own (`evaluate.evaluate_model` with
`chunk_seconds`), which is what the scales are fitted and the threshold certified on;
the test split is also reported on whole utterances, with the same scales, so that the
two regimes' calibration can be compared.
"""

import functools
import json
import pathlib

from matplotlib import figure
import numpy as np

from eesep_jax import config_lib
from eesep_jax import data
from eesep_jax import errors
from eesep_jax import files
from eesep_jax import inference
from eesep_jax import runs
from eesep_jax.analysis import calibration
from eesep_jax.analysis import evaluate
from eesep_jax.core import probabilistic
from eesep_jax.core import stopping

# The guarantee's defaults: at most a share DELTA of utterances short of the target,
# wrong with probability at most EPSILON.
DELTA = config_lib.default("evaluation.delta")
EPSILON = config_lib.default("evaluation.epsilon")
RELIABILITY_BINS = 10
PIT_BINS = 20
# Utterances of the fit split, at least: one in each of its two halves.
MIN_FIT_UTTERANCES = 2
TOO_FEW_TO_FIT = (
  f"calibrate needs at least {MIN_FIT_UTTERANCES} (the scales are fitted on "
  "one half, the threshold certified on the other)"
)
JSON_FILE = "calibration.json"
FIGURE_FILES = {
  "reliability": "reliability.png",
  "pit": "pit_hist.png",
  "exit_depth": "exit_depth_hist.png",
  "tradeoff": "tradeoff.png",
  "regimes": "reliability_regimes.png",
}


def _key(target_snr_db):
  """JSON key of a target: `15.0 -> "15"`."""
  return f"{target_snr_db:g}"


def _parameters(table, scales=None):
  """The variance parameters `{name: [utterances, exits, sources]}` of a table with one
  variance block per utterance, with post-hoc `scales` `{name: [exits]}` applied."""
  if table.num_blocks != 1:
    raise ValueError(
      f"calibration needs one variance block per utterance (block_length "
      f"None); the table has up to {table.num_blocks}"
    )
  params = {name: value[..., 0] for name, value in table.variance.items()}
  if scales is None:
    return params
  crosstalk = _crosstalk(table)[..., None] if "crosstalk_slope" in scales else None
  return probabilistic.apply_posthoc(params, scales, exit_axis=1, crosstalk=crosstalk)


def _crosstalk(table):
  """The table's cross-talk `[utterances, exits]`, which a cross-talk slope needs.

  Raises:
    ValueError: for a table saved before cross-talk was recorded.
  """
  if table.crosstalk is None:
    raise ValueError(
      "the exit table records no crosstalk, which a cross-talk slope needs: evaluate again"
    )
  return table.crosstalk


def halves(utterances):
  """`(first, second)`: the rows `[indices]` of alternate utterances, in order of first
  appearance, given each row's utterance `[rows]` (`ExitTable.utterance`); every chunk
  of an utterance goes to the same half."""
  order = {utterance: k for k, utterance in enumerate(dict.fromkeys(utterances))}
  parity = np.array([order[utterance] % 2 for utterance in utterances])
  return np.flatnonzero(parity == 0), np.flatnonzero(parity == 1)


def fit_scales(table, method="nll", fit_alpha=False, targets=stopping.TARGETS_DB):
  """Post-hoc scales fitted on every source of every utterance of an exit table.

  "nll" and "moments": `calibration.fit_posthoc`'s per-exit scales. "brier": those of
  "nll", then the scales and a cross-talk slope fitted to the decision at `targets`
  (`calibration.fit_decision_posthoc`).
  """
  if method not in probabilistic.POSTHOC_METHODS:
    raise ValueError(f"method={method!r}: must be one of {probabilistic.POSTHOC_METHODS}")
  if fit_alpha and method != "nll":
    raise ValueError('fit_alpha needs method="nll"')
  params = _parameters(table)

  # `fit_posthoc` takes the exits on the last axis: `[utterances, sources, exits]`.
  def exits_last(values):
    return np.swapaxes(values, 1, 2)

  scales = calibration.fit_posthoc(
    {name: exits_last(value) for name, value in params.items()},
    exits_last(table.error_energy),
    table.num_samples[:, None, None],
    method="moments" if method == "moments" else "nll",
    fit_alpha=fit_alpha,
  )
  if method != "brier":
    return scales
  decision = calibration.fit_decision_posthoc(
    params,
    table.estimate_energy,
    table.snr_min,
    _crosstalk(table),
    table.num_samples,
    targets,
    start=scales,
  )
  return {**scales, **decision}


def _exceedance(table, params, targets):
  """`probabilistic.snr_exceedance` of every source and exit, `P(SNR ≥ γ)` `[targets,
  utterances, exits, sources]` float64, given the parameters (`_parameters`)."""
  blocks = {name: value[..., None] for name, value in params.items()}  # The one block.
  num_samples = table.num_samples[:, None, None, None]
  return np.stack(
    [
      np.asarray(
        probabilistic.snr_exceedance(table.estimate_energy, blocks, target, num_samples), np.float64
      )
      for target in targets
    ]
  )


def _predictions(table, params, targets):
  """`(probability, outcome)`, each `[targets, utterances, exits, sources]`: the predicted
  `P(SNR ≥ γ)` (`_exceedance`) and whether the source's realised SNR reaches `γ`."""
  outcome = table.source_snr >= np.reshape(targets, (-1, 1, 1, 1))
  return _exceedance(table, params, targets), outcome


def _at_exits(table, taken, gmacs_per_second):
  """Compute and quality of the 1-based exits `taken` `[utterances]`."""
  index = taken - 1  # Along the exit axis.
  return {
    "mean_exit": float(np.mean(taken)),
    "exit_histogram": np.bincount(index, minlength=table.num_exits).tolist(),
    "gmacs_per_second": float(np.mean(np.asarray(gmacs_per_second)[index])),
    "si_snri": float(np.mean(table.si_snri[np.arange(taken.size), index])),
  }


def _probabilistic_exits(probability, confidence):
  """`(taken, accepted)`: the 1-based exit the probabilistic policy at `confidence`
  (any shape broadcasting against `probability`'s leading axes) takes, and whether that
  exit accepts (else the last exit was taken for want of one), from the worst source's
  `P(SNR ≥ γ)` `[utterances, exits]`."""
  exits = np.arange(1, probability.shape[-1] + 1)
  accept = np.asarray(
    stopping.accepts(stopping.Policy(confidence=confidence), exits, probability=probability)
  )
  taken = np.asarray(stopping.first_accepting_exit(accept))
  return taken, np.take_along_axis(accept, taken[..., None] - 1, axis=-1)[..., 0]


def _measures(probability, outcome, pit, crps, nll, params, num_samples, targets):
  """Calibration measures of the predictions given, pooled over their every axis but
  the leading (targets) one of `probability` and `outcome`."""
  reliability = [
    calibration.reliability(p, o, RELIABILITY_BINS) for p, o in zip(probability, outcome)
  ]
  ece = {_key(t): r["ece"] for t, r in zip(targets, reliability)}
  return {
    "ece": ece,
    "ece_mean": float(np.mean(list(ece.values()))),
    "ks": calibration.ks_distance(pit),
    "crps": float(np.mean(crps)),
    "nll": float(np.mean(nll)),
    "sharpness": float(calibration.sharpness(params, num_samples)),
    "reliability": {
      _key(t): {name: r[name].tolist() for name in ("confidence", "frequency", "count")}
      for t, r in zip(targets, reliability)
    },
    "pit_histogram": np.histogram(pit, PIT_BINS, (0.0, 1.0))[0].tolist(),
  }


def calibration_report(
  table,
  *,
  gmacs_per_second,
  targets=stopping.TARGETS_DB,
  confidences=stopping.CONFIDENCES,
  scales=None,
):
  """Calibration of every exit and of the probabilistic policy (see the module docstring).

  Args:
    table: an `exit_table.ExitTable` with one variance block per utterance.
    gmacs_per_second: `[exits]` compute to reach each exit.
    targets: target SNRs `γ` in dB.
    confidences: confidence levels `p` of the policy.
    scales: post-hoc scales `{name: [exits]}` applied to the parameters; None: none.

  Returns:
    A JSON-ready dict: `per_exit`, per exit its `exit` (1-based), `gmacs_per_second`,
    mean `si_snri` and measures; `pooled`, the measures over all exits; measures are
    `ece` (`{γ: ECE}`), `ece_mean`, `ks`, `crps` (dB), `nll` (nats), `sharpness` (dB),
    `reliability` (`{γ: {confidence, frequency, count}}` per bin) and `pit_histogram`
    (`PIT_BINS` counts), per source; and per utterance `brier` (`{γ: Brier score}` of
    the worst source's `P(SNR ≥ γ)` against `snr_min ≥ γ`) and `brier_mean`.
    `target_satisfaction`, per `(γ, p)`: `target_snr_db`, `confidence`; `count`
    (utterances that stopped with `P ≥ p`), `share` meeting `γ` (NaN if none stopped),
    its interval `low`, `high`; and `mean_exit`, `exit_histogram`, `gmacs_per_second`,
    `si_snri` at the exits taken.
  """
  targets = [float(t) for t in targets]
  params = _parameters(table, scales)  # [utterances, exits, sources] each.
  probability, outcome = _predictions(table, params, targets)
  energy = table.error_energy
  num_samples = np.broadcast_to(table.num_samples[:, None, None], energy.shape)
  if "variance" in params:
    pit = calibration.pit_values_gaussian(energy, params["variance"], num_samples)
  else:
    pit = calibration.pit_values(energy / num_samples, params["alpha"], params["beta"], num_samples)
  crps = calibration.snr_crps(table.estimate_energy, params, table.source_snr, num_samples)
  nll = calibration.log_energy_nll(energy, params, num_samples)

  def measures(select):
    return _measures(
      select(probability),
      select(outcome),
      select(pit),
      select(crps),
      select(nll),
      {name: select(p) for name, p in params.items()},
      select(num_samples),
      targets,
    )

  worst = probability.min(axis=-1)  # [targets, utterances, exits].
  reached = table.snr_min >= np.reshape(targets, (-1, 1, 1))

  def decision(select):
    """The Brier score of what the policy reads, the worst source's `P(SNR ≥ γ)`,
    against its reaching `γ`: the score `--method brier` fits."""
    brier = {
      _key(t): calibration.brier_score(select(p), select(r))
      for t, p, r in zip(targets, worst, reached)
    }
    return {"brier": brier, "brier_mean": float(np.mean(list(brier.values())))}

  # Exits are the second-to-last axis of every per-source array measured, the last of
  # every per-utterance one.
  per_exit = [
    {
      "exit": k + 1,
      "gmacs_per_second": float(gmacs_per_second[k]),
      "si_snri": float(np.mean(table.si_snri[:, k])),
      **measures(lambda x, k=k: x[..., k, :]),
      **decision(lambda x, k=k: x[..., k]),
    }
    for k in range(table.num_exits)
  ]
  rows = np.arange(worst.shape[1])
  satisfaction = []
  for target, per_target in zip(targets, worst):
    exits, accepted = _probabilistic_exits(per_target, np.asarray(confidences)[:, None, None])
    for confidence, taken, exited in zip(confidences, exits, accepted):
      satisfaction.append(
        {
          "target_snr_db": target,
          "confidence": float(confidence),
          **calibration.target_satisfaction(exited, table.snr_min[rows, taken - 1], target),
          **_at_exits(table, taken, gmacs_per_second),
        }
      )
  return {
    "per_exit": per_exit,
    "pooled": {**measures(lambda x: x), **decision(lambda x: x)},
    "target_satisfaction": satisfaction,
  }


def resampled_ece(table, weights, *, targets=stopping.TARGETS_DB, scales=None):
  """The pooled `ece_mean` of `calibration_report` over resamples of the utterances.

  Args:
    table, targets, scales: as for `calibration_report`.
    weights: `[resamples, utterances]`, how often each utterance is drawn in each resample
      (`operating_points.bootstrap_weights`).

  Returns:
    `[resamples]` the mean over targets of each target's ECE.
  """
  targets = [float(t) for t in targets]
  probability, outcome = _predictions(table, _parameters(table, scales), targets)
  return np.mean(
    [
      calibration.resampled_ece(p, o, weights, RELIABILITY_BINS)
      for p, o in zip(probability, outcome)
    ],
    axis=0,
  )


def guarantee(
  calibration_table,
  test_table,
  *,
  target_snr_db,
  delta,
  epsilon,
  gmacs_per_second,
  scales=None,
  calibration_groups=None,
  test_groups=None,
):
  """A threshold certified on `calibration_table` (learn then test), tried on `test_table`.

  `calibration.guaranteed_threshold` on the worst source's `P(SNR ≥ γ)` and SNR: with
  probability `≥ 1 − ε` over the calibration utterances, stopping at the first exit
  whose probability reaches the threshold fails `γ` on a share `≤ δ` of utterances.

  Args:
    calibration_table, test_table: `exit_table.ExitTable`s; the calibration utterances
      must not be those `scales` were fitted on.
    target_snr_db, delta, epsilon: `γ`, `δ`, `ε`.
    gmacs_per_second: `[exits]` compute to reach each exit.
    scales: post-hoc scales applied to both tables' parameters; None: none.
    calibration_groups, test_groups: the utterance of each row when the rows are
      chunks (`ExitTable.utterance`), whose dependence the certificate and the test
      interval then allow for (`calibration.guaranteed_threshold`,
      `calibration.failure_rate`); None: every row its own utterance.

  Returns:
    A JSON-ready dict: `target_snr_db`, `delta`, `epsilon`, `threshold` (None when
    nothing is certified, or when the model has one exit and so nothing stops early),
    `num_utterances` and `num_chunks` (calibration), `calibration_risk` (failure share
    there), and `test`: the failure share `risk` with its interval `low`, `high`, and
    `mean_exit`, `exit_histogram`, `gmacs_per_second`, `si_snri` on the test chunks
    (None without a threshold).
  """

  def worst_source(table):  # [utterances, exits].
    return _exceedance(table, _parameters(table, scales), [target_snr_db])[0].min(axis=-1)

  num_chunks = len(calibration_table.ids)
  entry = {
    "target_snr_db": float(target_snr_db),
    "delta": delta,
    "epsilon": epsilon,
    "threshold": None,
    "num_utterances": len(set(calibration_groups))
    if calibration_groups is not None
    else num_chunks,
    "num_chunks": num_chunks,
    "calibration_risk": None,
    "test": None,
  }
  if calibration_table.num_exits < 2:
    return entry
  result = calibration.guaranteed_threshold(
    worst_source(calibration_table),
    calibration_table.snr_min,
    target_snr_db,
    delta,
    epsilon,
    groups=calibration_groups,
  )
  threshold = entry["threshold"] = result["threshold"]
  if threshold is None:
    return entry
  entry["calibration_risk"] = float(result["risk"][result["certified"]][-1])
  taken, _ = _probabilistic_exits(worst_source(test_table), threshold)
  failed = test_table.snr_min[np.arange(taken.size), taken - 1] < target_snr_db
  rate = calibration.failure_rate(failed, test_groups)
  entry["test"] = {name: rate[name] for name in ("risk", "low", "high")}
  entry["test"].update(_at_exits(test_table, taken, gmacs_per_second))
  return entry


def check_fit_count(fit_source, max_utterances=None):
  """Refuses, before any work, a fit source with fewer than `MIN_FIT_UTTERANCES`
  utterances (of which `max_utterances`, when given, are evaluated): no scale can be
  fitted and no threshold certified on two disjoint halves of fewer.

  Raises:
    errors.UsageError: when `max_utterances` is below the minimum.
    errors.DataError: naming the source, when it holds fewer utterances.
  """
  if max_utterances is not None and max_utterances < MIN_FIT_UTTERANCES:
    raise errors.UsageError(f"max_utterances {max_utterances}", TOO_FEW_TO_FIT)
  count = len(fit_source)
  if count < MIN_FIT_UTTERANCES:
    name = getattr(fit_source, "name", repr(fit_source))
    raise errors.DataError(
      f"{name}: {count} utterance{'' if count == 1 else 's'}: {TOO_FEW_TO_FIT}"
    )


def calibrate(
  variables,
  model_config,
  fit_source,
  test_source,
  *,
  method="nll",
  fit_alpha=False,
  target_snr_db=stopping.TARGET_SNR_DB,
  delta=DELTA,
  epsilon=EPSILON,
  targets=stopping.TARGETS_DB,
  confidences=stopping.CONFIDENCES,
  max_utterances=None,
  progress=True,
  chunk_seconds=inference.CHUNK_SECONDS,
  overlap_seconds=inference.OVERLAP_SECONDS,
):
  """Fits post-hoc scales and a guaranteed threshold in the regime `separate` deploys,
  and reports calibration on a test set, in that regime and on whole utterances.

  Both sources are evaluated in the chunks `inference.separate_long` would cut them
  into (`chunk_seconds`, `overlap_seconds`; `evaluate.evaluate_model`, no post-hoc),
  each chunk on its own as `separate` runs it. The fit source's utterances are split
  into two disjoint halves, alternately in evaluation order, every chunk of an
  utterance in its utterance's half: the scales are fitted on the first half's chunks;
  the threshold is certified on the second's with the scales applied, since learn then
  test needs probabilities that do not depend on its calibration data (and the chunks
  of one utterance count as one draw: see `calibration.guaranteed_threshold`). The test
  source is reported before and after the scales, on chunks and on whole utterances
  (evaluated once more when some utterance is longer than a chunk).

  Args:
    variables: the model variables.
    model_config: its `models.PressNetConfig`.
    fit_source, test_source: random-access examples (`data.open_split(...)`), e.g. the
      validation and test splits; at least `MIN_FIT_UTTERANCES` fit utterances
      (`check_fit_count`, before any work).
    method, fit_alpha: as in `fit_scales`.
    target_snr_db, delta, epsilon: the guarantee's `γ`, `δ`, `ε` (`γ` is added to
      `targets`).
    targets: target SNRs `γ` in dB of the report.
    confidences: confidence levels `p` of the report.
    max_utterances: evaluate at most this many utterances of each source.
    progress: show progress bars.
    chunk_seconds, overlap_seconds: `separate`'s chunking, the regime calibrated.

  Returns:
    `(scales, test_table, report)`: the fitted scales `{name: [exits]}`, the test
    source's `exit_table.ExitTable` (its chunks), and a JSON-ready dict: `regime`
    (`chunk_seconds`, `overlap_seconds`), `num_utterances` and `num_chunks` (test),
    `num_exits`, `num_sources`, `targets_db`, `confidences`, `gmacs_per_second_by_exit`,
    `posthoc` (`method`, `fit_alpha`, `num_utterances`, `num_chunks`, `scales`,
    `regime`), `before` and `after` (`calibration_report` of the test chunks without
    and with the scales), `whole_utterances` (`num_utterances`, `before`, `after`: the
    same on whole test utterances) and `guarantee` (`guarantee`).
  """
  targets = tuple(sorted({float(t) for t in (*targets, target_snr_db)}))
  regime = {"chunk_seconds": float(chunk_seconds), "overlap_seconds": float(overlap_seconds)}
  evaluation = functools.partial(
    evaluate.evaluate_model,
    variables,
    model_config,
    targets=targets,
    confidences=(),
    policies=(),
    span=False,
    max_utterances=max_utterances,
    enhancement_metrics=False,
    progress=progress,
  )
  check_fit_count(fit_source, max_utterances)
  fit_table, _ = evaluation(fit_source, **regime)
  scale_half, threshold_half = map(fit_table.subset, halves(fit_table.utterance))
  scales = fit_scales(scale_half, method, fit_alpha, targets)
  test_table, summary = evaluation(test_source, **regime)
  # No utterance cut: the chunks evaluated are the whole utterances.
  if np.array_equal(test_table.ids, test_table.utterance):
    whole_table = test_table
  else:
    whole_table = evaluation(test_source)[0]
  gmacs = summary["gmacs_per_second_by_exit"]
  report = functools.partial(
    calibration_report, gmacs_per_second=gmacs, targets=targets, confidences=confidences
  )
  return (
    scales,
    test_table,
    {
      "regime": regime,
      "num_utterances": len(set(test_table.utterance)),
      "num_chunks": len(test_table.ids),
      "num_exits": model_config.num_exits,
      "num_sources": model_config.num_sources,
      "targets_db": list(targets),
      "confidences": [float(p) for p in confidences],
      "gmacs_per_second_by_exit": gmacs,
      "posthoc": {
        "method": method,
        "fit_alpha": fit_alpha,
        "num_utterances": len(set(scale_half.utterance)),
        "num_chunks": len(scale_half.ids),
        "regime": regime,
        "scales": {name: value.tolist() for name, value in scales.items()},
      },
      "before": report(test_table),
      "after": report(test_table, scales=scales),
      "whole_utterances": {
        "num_utterances": len(whole_table.ids),
        "before": report(whole_table),
        "after": report(whole_table, scales=scales),
      },
      "guarantee": guarantee(
        threshold_half,
        test_table,
        target_snr_db=target_snr_db,
        delta=delta,
        epsilon=epsilon,
        gmacs_per_second=gmacs,
        scales=scales,
        calibration_groups=threshold_half.utterance,
        test_groups=test_table.utterance,
      ),
    },
  )


def calibrate_checkpoint(
  checkpoint,
  out_dir,
  *,
  config=None,
  fit_config=None,
  fit_split=None,
  split=None,
  **calibrate_kwargs,
):
  """What `eesep calibrate` does: `calibrate` a training run, keep its scales, report.

  The post-hoc scales are saved in the checkpoint folder, with the regime they were
  fitted in (`calibration.save_posthoc`), where `evaluate` and `separate` find them,
  and the report goes to `out_dir` (`write_calibration`).

  Args:
    checkpoint: a training workdir.
    out_dir: folder for `calibration.json`, the test split's `exit_table.npz` and
      `per_utterance.csv`, and the figures.
    config: the experiment config whose data is read (`data.open_split`); None: the
      checkpoint's own (`runs.load`).
    fit_config: the config whose data the fit split is read from, when not `config`'s
      (fit on in-domain validation data, test on a shifted corpus).
    fit_split: where the scales are fitted and the threshold certified; None: the
      config's validation split.
    split: where calibration is measured; None: the config's test split.
    **calibrate_kwargs: `calibrate`'s keywords (`method`, `target_snr_db`, ...);
      `method` defaults to the config's `evaluation.calibration_method`, as in
      `eesep calibrate`.

  Returns:
    `(report, paths)`: `calibrate`'s report, with `checkpoint`, `dataset` and
    `fit_dataset` added and the scales' `path` under `posthoc`, and
    `write_calibration`'s paths.
  """
  # The scales it holds are never read: calibrating replaces them, damaged or not.
  run = runs.load(checkpoint)
  config = run.config if config is None else config
  model_config, variables = run.model_config, run.variables
  calibrate_kwargs.setdefault(
    "method", config_lib.get_field(config, "evaluation.calibration_method")
  )
  fit_source = data.open_split(fit_config or config, fit_split or config.data.valid_split)
  test_source = data.open_split(config, split or config.data.test_split)
  scales, table, report = calibrate(
    variables, model_config, fit_source, test_source, **calibrate_kwargs
  )
  posthoc_path = calibration.save_posthoc(checkpoint, scales, regime=report["regime"])
  report = {
    "checkpoint": str(checkpoint),
    "dataset": repr(test_source),
    "fit_dataset": repr(fit_source),
    **report,
  }
  report["posthoc"]["path"] = str(posthoc_path)
  return report, write_calibration(out_dir, table, report)


def text_summary(report):
  """A few lines for the terminal: every exit's measures before → after post-hoc
  calibration, and the certified threshold."""
  regime = report["regime"]
  lines = [
    f"Calibration on {report['num_utterances']} utterances in {report['num_chunks']} "
    f"chunks of {regime['chunk_seconds']:g} s (overlap {regime['overlap_seconds']:g} s), "
    f"as `separate` runs them (before -> after post-hoc, "
    f"{report['posthoc']['method']} fit on {report['posthoc']['num_utterances']}):",
    f"{'exit':>8} {'ECE':>15} {'KS':>15} {'CRPS (dB)':>15} {'NLL':>15} {'Brier':>15}",
  ]
  panels = [
    (str(b["exit"]), b, a)
    for b, a in zip(report["before"]["per_exit"], report["after"]["per_exit"])
  ]
  for name, before, after in panels + [
    ("all", report["before"]["pooled"], report["after"]["pooled"])
  ]:
    lines.append(
      f"{name:>8} "
      + " ".join(
        f"{f'{before[key]:.3f} -> {after[key]:.3f}':>15}"
        for key in ("ece_mean", "ks", "crps", "nll", "brier_mean")
      )
    )
  whole = report["whole_utterances"]
  lines.append(
    "Pooled ECE, before -> after: in chunks {:.3f} -> {:.3f}; on whole utterances "
    "{:.3f} -> {:.3f}".format(
      report["before"]["pooled"]["ece_mean"],
      report["after"]["pooled"]["ece_mean"],
      whole["before"]["pooled"]["ece_mean"],
      whole["after"]["pooled"]["ece_mean"],
    )
  )
  entry = report["guarantee"]
  setting = (
    f"gamma = {entry['target_snr_db']:g} dB, delta = {entry['delta']:g}, "
    f"epsilon = {entry['epsilon']:g}, {entry['num_utterances']} utterances, "
    f"{entry['num_chunks']} chunks"
  )
  if report["num_exits"] == 1:
    lines.append("No threshold: the model has one exit, so nothing stops early.")
  elif entry["threshold"] is None:
    lines.append(
      f"No threshold certified ({setting}): even the last exit misses the target "
      "too often, or there are too few utterances."
    )
  else:
    test = entry["test"]
    lines.append(
      f"Certified threshold {entry['threshold']:g} ({setting}): on the test "
      f"split's chunks {test['risk']:.1%} miss the target [{test['low']:.1%}, "
      f"{test['high']:.1%}], mean exit {test['mean_exit']:.2f}, "
      f"{test['gmacs_per_second']:.3g} GMAC/s."
    )
  return "\n".join(lines)


# ----------------------------------------------------------------------------------
# Figures (matplotlib's object interface: no pyplot, no global backend).


def _panels(count, size=2.6, columns=4):
  """A figure with `count` square panels, at most `columns` to a row; `(figure, axes)`."""
  columns = min(columns, count)
  rows = -(-count // columns)
  fig = figure.Figure(figsize=(size * columns, size * rows), layout="constrained")
  axes = fig.subplots(rows, columns, squeeze=False).ravel()
  for ax in axes[count:]:
    ax.set_visible(False)
  return fig, axes[:count]


def _by_panel(report):
  """`[(title, before measures, after measures)]`: every exit, then pooled."""
  before, after = report["before"], report["after"]
  panels = [(f"exit {b['exit']}", b, a) for b, a in zip(before["per_exit"], after["per_exit"])]
  return panels + [("all exits", before["pooled"], after["pooled"])]


def _reliability_panel(ax, title, before, after, targets):
  """One reliability diagram: after post-hoc solid, before dashed, a colour per target."""
  ax.plot([0, 1], [0, 1], color="0.6", linewidth=0.8)
  for i, target in enumerate(targets):
    for measures, style, label in ((after, "-", f"{target:g} dB"), (before, "--", None)):
      bins = measures["reliability"][_key(target)]
      shown = [(c, f) for c, f, n in zip(bins["confidence"], bins["frequency"], bins["count"]) if n]
      ax.plot(*zip(*shown), style, marker=".", color=f"C{i}", label=label)
  ax.set(
    title=f"{title}: ECE {after['ece_mean']:.3f} ({before['ece_mean']:.3f})",
    xlim=(0, 1),
    ylim=(0, 1),
    xlabel="predicted P(SNR ≥ γ)",
    ylabel="observed frequency",
  )
  ax.title.set_fontsize("small")


def reliability_figure(report):
  """Reliability diagrams in the calibrated regime (chunks), a panel per exit and one
  pooled: after post-hoc solid, before dashed, a colour per target."""
  panels = _by_panel(report)
  fig, axes = _panels(len(panels))
  for ax, panel in zip(axes, panels):
    _reliability_panel(ax, *panel, report["targets_db"])
  axes[0].legend(fontsize="x-small", title="γ (dashed: before)", title_fontsize="x-small")
  return fig


def regimes_figure(report):
  """Pooled reliability on whole utterances and in `separate`'s chunks, side by side,
  before (dashed) and after (solid) the scales fitted in chunks."""
  regime, whole = report["regime"], report["whole_utterances"]
  fig, axes = _panels(2, size=3.2)
  _reliability_panel(
    axes[0],
    f"whole utterances ({whole['num_utterances']})",
    whole["before"]["pooled"],
    whole["after"]["pooled"],
    report["targets_db"],
  )
  _reliability_panel(
    axes[1],
    f"chunks of {regime['chunk_seconds']:g} s ({report['num_chunks']})",
    report["before"]["pooled"],
    report["after"]["pooled"],
    report["targets_db"],
  )
  axes[0].legend(fontsize="x-small", title="γ (dashed: before)", title_fontsize="x-small")
  return fig


def pit_figure(report):
  """PIT histograms as densities (uniform: 1), a panel per exit and one pooled: after
  post-hoc filled, before as a line."""
  panels = _by_panel(report)
  fig, axes = _panels(len(panels))
  edges = np.linspace(0, 1, PIT_BINS + 1)
  for ax, (title, before, after) in zip(axes, panels):
    for measures, kind, label in ((after, "stepfilled", "after"), (before, "step", "before")):
      counts = np.asarray(measures["pit_histogram"], float)
      ax.hist(
        edges[:-1],
        edges,
        weights=counts * PIT_BINS / max(counts.sum(), 1),
        histtype=kind,
        alpha=0.5 if kind == "stepfilled" else 1.0,
        color="C0" if kind == "stepfilled" else "C3",
        label=label,
      )
    ax.axhline(1.0, color="0.4", linewidth=0.8)
    ax.set(
      title=f"{title}: KS {after['ks']:.3f} ({before['ks']:.3f})",
      xlim=(0, 1),
      xlabel="PIT u",
      ylabel="density",
    )
    ax.title.set_fontsize("small")
  axes[0].legend(fontsize="x-small", title="post-hoc", title_fontsize="x-small")
  return fig


def exit_depth_figure(report):
  """Exits taken (after post-hoc) at the guarantee's target: one bar group per
  confidence, and the certified threshold's."""
  target = report["guarantee"]["target_snr_db"]
  series = [
    (f"p = {entry['confidence']:g}", entry["exit_histogram"])
    for entry in report["after"]["target_satisfaction"]
    if entry["target_snr_db"] == target
  ]
  if report["guarantee"]["test"] is not None:
    series.append(
      (
        f"certified λ = {report['guarantee']['threshold']:g}",
        report["guarantee"]["test"]["exit_histogram"],
      )
    )
  fig = figure.Figure(figsize=(6, 3.5), layout="constrained")
  ax = fig.subplots()
  exits = np.arange(1, report["num_exits"] + 1)
  width = 0.8 / len(series)
  for i, (label, histogram) in enumerate(series):
    ax.bar(exits - 0.4 + width * (i + 0.5), histogram, width, label=label)
  ax.set(
    xticks=exits,
    xlabel="exit",
    ylabel="utterances",
    title=f"Exits taken, γ = {target:g} dB (post-hoc calibrated)",
  )
  ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
  return fig


def tradeoff_figure(report):
  """SI-SNRi against GMAC/s: the probabilistic policy over the `(γ, p)` grid, a curve
  per `γ` (after post-hoc solid, before dashed), the fixed exits as reference points
  and the certified threshold's operating point."""
  fig = figure.Figure(figsize=(6, 4.5), layout="constrained")
  ax = fig.subplots()
  fixed = report["after"]["per_exit"]
  ax.plot(
    [e["gmacs_per_second"] for e in fixed],
    [e["si_snri"] for e in fixed],
    "s-",
    color="k",
    linewidth=0.8,
    label="fixed exits",
  )
  for entry in fixed:
    ax.annotate(
      f"{entry['exit']}",
      (entry["gmacs_per_second"], entry["si_snri"]),
      textcoords="offset points",
      xytext=(4, -10),
      fontsize="small",
    )
  for i, target in enumerate(report["targets_db"]):
    for name, style in (("after", "o-"), ("before", "o--")):
      points = sorted(
        (e["gmacs_per_second"], e["si_snri"])
        for e in report[name]["target_satisfaction"]
        if e["target_snr_db"] == target
      )
      ax.plot(
        *zip(*points),
        style,
        color=f"C{i}",
        markersize=3,
        label=f"γ = {target:g} dB" if name == "after" else None,
      )
  if report["guarantee"]["test"] is not None:
    test = report["guarantee"]["test"]
    ax.plot(
      test["gmacs_per_second"],
      test["si_snri"],
      "*",
      color="C3",
      markersize=12,
      label="certified threshold",
    )
  ax.set(
    xlabel="GMAC/s",
    ylabel="SI-SNRi (dB)",
    title="Probabilistic exits over (γ, p) (dashed: before post-hoc)",
  )
  ax.legend(fontsize="small")
  return fig


def write_calibration(out_dir, test_table, report):
  """Writes `calibration.json`, the test table as `exit_table.npz` and its export
  `per_utterance.csv`, and the `FIGURE_FILES` to `out_dir`, all or nothing
  (`files.atomic_writes`).

  Returns:
    Their paths by kind: `json`, `table`, `csv` and the keys of `FIGURE_FILES`.
  """
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  figures = {
    "reliability": reliability_figure,
    "pit": pit_figure,
    "exit_depth": exit_depth_figure,
    "tradeoff": tradeoff_figure,
    "regimes": regimes_figure,
  }
  paths = {
    "json": out_dir / JSON_FILE,
    "table": out_dir / evaluate.TABLE_FILE,
    "csv": out_dir / evaluate.CSV_FILE,
    **{kind: out_dir / FIGURE_FILES[kind] for kind in figures},
  }
  with files.atomic_writes(paths) as partials:
    partials["json"].write_text(json.dumps(evaluate.json_ready(report), indent=2, allow_nan=False))
    test_table.save(partials["table"])
    test_table.to_csv(partials["csv"])
    for kind, draw in figures.items():
      draw(report).savefig(partials[kind], dpi=120)
  return paths
