"""The variance-parameterisation ablation: its variants, and the comparison of their results.

    variants = ablation.variants(config_lib.model_config(config))
    entry = ablation.summarise(variant, config, report, base_model_config=..., ...)
    ablation.write_comparison("runs/ablation", comparison)
    ablation.markdown_table(ablation.load_comparison("runs/ablation"))

Every variant is one experiment config: the base config (the same data, seed, steps,
batch and optimiser for all) with the variant's dotted overrides (`variants`):

- the five variance parameterisations of docs/method.md §3, and `monotone` on against off
  for the base config's parameterisation;
- single-exit baselines, one per depth `k`: a network cut after its `k`-th stage with
  a single exit, trained alone on the same budget (the same steps and batches). The
  method's claim is that training every exit jointly costs each exit little against a
  network of that depth trained for it alone. A one-hot `loss.exit_weights` on the
  full network is not that baseline: its later stages would be dead weight, and its
  earlier heads untrained. The baseline of depth `k` computes what exit `k` of the
  full network does, less the heads of the exits before it;
- the per-exit permutation, against the default joint one (docs/method.md §6).

This module computes and reports: a variant's entry of the comparison from its
calibration report (`summarise`), and the comparison's table (`comparison.md`, `.csv`,
`.json`) and figures (`write_comparison`). The driver that trains, calibrates and
resumes the variants is an experiment, `experiments/ablations/driver.py`, whose command
line is `experiments/ablations/variance_parameterisations.py`.
"""

import csv
import dataclasses
import io
import json
import pathlib

import matplotlib
from matplotlib import figure
import numpy as np

from eesep_jax import config_lib
from eesep_jax import files
from eesep_jax.analysis import calibration_report
from eesep_jax.analysis import evaluate
from eesep_jax.analysis import operating_points
from eesep_jax.core import probabilistic
from eesep_jax.core import stopping

FILES = {
  "markdown": "comparison.md",
  "csv": "comparison.csv",
  "json": "comparison.json",
  "si_snri": "si_snri_per_exit.png",
  "calibration": "calibration_per_exit.png",
  "differences": "si_snri_differences.png",
  "honesty": "honesty_per_set.png",
}
# Measures of the table, each before and after post-hoc calibration: the calibration
# report's key and the Markdown header.
MEASURES = {"nll": "NLL", "ece_mean": "ECE", "ks": "KS", "crps": "CRPS (dB)"}


@dataclasses.dataclass(frozen=True)
class Variant:
  """One arm of the ablation.

  Attributes:
    name: its folder under the ablation's output, and its row of the table.
    kind: `"variance"`, `"single-exit"` or `"permutation"`.
    description: what differs from the base config, in words.
    overrides: the dotted `config_lib.load_config` overrides that make it.
  """

  name: str
  kind: str
  description: str
  overrides: tuple[str, ...]


def variance_name(variance):
  """A variance config's variant name: `"student-snr"`, `"student-snr+monotone"`."""
  return variance.parameterisation + ("+monotone" if variance.monotone else "")


def _variance_variant(parameterisation, monotone):
  variance = probabilistic.VarianceConfig(parameterisation=parameterisation, monotone=monotone)
  return Variant(
    variance_name(variance),
    "variance",
    f"{parameterisation} head" + (", monotone over exits" if monotone else ""),
    (f"model.variance.parameterisation={parameterisation}", f"model.variance.monotone={monotone}"),
  )


def variants(model_config):
  """Every variant of the ablation for a base model (`config_lib.model_config`).

  The five parameterisations with `monotone` off and on, the single-exit baselines of
  every depth, and the per-exit permutation. The last two kinds keep the base model's
  variance head. Every variant but the base model's own variance variant
  (`variance_name`) is compared with that one, its `reference`.
  """
  result = [
    _variance_variant(parameterisation, monotone)
    for parameterisation in probabilistic.PARAMETERISATIONS
    for monotone in (False, True)
  ]
  num_exits = model_config.num_exits
  for depth in range(1, num_exits + 1):
    result.append(
      Variant(
        f"single-exit-{depth}",
        "single-exit",
        f"a network of {depth} of {num_exits} stages with one exit, trained alone",
        (
          "model.num_exits=1",
          f"model.num_exit_blocks={depth * model_config.blocks_per_stage}",
          "loss.exit_weights=None",
        ),
      )
    )
  result.append(
    Variant(
      "per-exit-permutation",
      "permutation",
      "each exit picks its own permutation",
      ("loss.permutation=per-exit",),
    )
  )
  return result


def select_variants(all_variants, names=None):
  """The variants named in `names` (in that order); all of them for None."""
  if names is None:
    return list(all_variants)
  by_name = {variant.name: variant for variant in all_variants}
  unknown = [name for name in names if name not in by_name]
  if unknown:
    raise ValueError(f"unknown variants {unknown}; the variants are {list(by_name)}")
  return [by_name[name] for name in names]


# ----------------------------------------------------------------------------------
# A variant's entry of the comparison.


def _per_exit(report, depth_of_exit):
  """`[{depth, gmacs_per_second, si_snri, <measure>_before, <measure>_after}]`."""
  return [
    {
      "depth": depth,
      "gmacs_per_second": before["gmacs_per_second"],
      "si_snri": before["si_snri"],
      **{
        f"{key}_{when}": entry[key]
        for key in MEASURES
        for when, entry in (("before", before), ("after", after))
      },
    }
    for depth, before, after in zip(
      depth_of_exit, report["before"]["per_exit"], report["after"]["per_exit"]
    )
  ]


def _satisfaction(measures, target_snr_db, confidence):
  """`(share, count)` of the target satisfaction entry of `(γ, p)`."""
  [entry] = [
    entry
    for entry in measures["target_satisfaction"]
    if entry["target_snr_db"] == target_snr_db and entry["confidence"] == confidence
  ]
  return entry["share"], entry["count"]


def summarise(variant, config, report, *, base_model_config, target_snr_db, confidence, sets=None):
  """A variant's entry of the comparison, from its calibration report.

  Exits are placed by depth, in stages of the base model: exit `j` of a model with
  `b` blocks per stage sits at depth `j · b / b_base`, so a single-exit baseline's
  one exit lines up with the full network's exit of the same depth.

  Returns:
    A JSON-ready dict: `variant`, `kind`; `reference`, the variance variant that a
    single-exit or permutation variant is compared with (None for variance
    variants); `description`, `overrides`; `per_exit` (`_per_exit`); and `row`, the
    table's columns: `si_snri_exit_{depth}` (None at depths the variant has no exit
    at), `gmacs_per_second` at its last exit (a single-exit baseline saves the heads
    of the exits before its depth), each of `MEASURES` pooled over the variant's
    exits `_before` and `_after` post-hoc calibration, `satisfaction_{before,after}`
    (the share reaching `γ` of the utterances that stopped with `P ≥ p`; None when
    none did) and `exited_{before,after}` (how many stopped so), the certified
    `threshold` and `num_utterances`; `depths`, each exit's depth; and `sets`, the
    `set_summary` of each report set given in `sets` (`{name: set_summary}`).
  """
  model_config = config_lib.model_config(config)
  stage = model_config.blocks_per_stage / base_model_config.blocks_per_stage
  depth_of_exit = [round(stage * k) for k in range(1, model_config.num_exits + 1)]
  per_exit = _per_exit(report, depth_of_exit)
  si_snri = {entry["depth"]: entry["si_snri"] for entry in per_exit}
  row = {
    "variant": variant.name,
    "description": variant.description,
    "parameterisation": model_config.variance.parameterisation,
    "monotone": model_config.variance.monotone,
    "permutation": config.loss.permutation,
    "num_exits": model_config.num_exits,
    **{
      f"si_snri_exit_{depth}": si_snri.get(depth)
      for depth in range(1, base_model_config.num_exits + 1)
    },
    "gmacs_per_second": per_exit[-1]["gmacs_per_second"],
  }
  for when in ("before", "after"):
    row.update({f"{key}_{when}": report[when]["pooled"][key] for key in MEASURES})
  for when in ("before", "after"):
    share, count = _satisfaction(report[when], target_snr_db, confidence)
    row.update({f"satisfaction_{when}": share, f"exited_{when}": count})
  row.update(threshold=report["guarantee"]["threshold"], num_utterances=report["num_utterances"])
  base_name = variance_name(base_model_config.variance)
  reference = None if variant.name == base_name else base_name
  return evaluate.json_ready(
    {
      "variant": variant.name,
      "kind": variant.kind,
      "reference": reference,
      "description": variant.description,
      "overrides": list(variant.overrides),
      "per_exit": per_exit,
      "row": row,
      "depths": depth_of_exit,
      "sets": sets or {},
    }
  )


def _interval(samples):
  low, high = operating_points.percentile_interval(samples)
  return low.tolist(), high.tolist()


def set_summary(table, summary, *, target_snr_db, confidence):
  """A variant's measures on one report set, from its calibrated evaluation.

  Args:
    table, summary: `evaluate.evaluate_model`'s output on the set, with the variant's
      post-hoc scales, at `(γ, p)` = `(target_snr_db, confidence)`.

  Returns:
    A JSON-ready dict: `num_utterances`; per exit `[exits]`: `si_snri` with its
    bootstrap interval `si_snri_low`, `si_snri_high`; the probabilistic policy at
    `(γ, p)`: `reach` (with `reach_low`, `reach_high`, Clopper–Pearson), the full
    depth's `full_depth_reach`, `stopped_early`, `satisfaction` (with its interval;
    None when none stopped early), `saved` and the oracle's `oracle_saved`, and
    `oracle_share`; honesty at the last exit: `predicted`, the mean `P(SNR ≥ γ)`, and
    `observed`, the share reaching `γ`; and `ece_mean` (with its bootstrap interval
    `ece_mean_low`, `ece_mean_high`), `ks`, `crps` pooled over exits
    (`calibration_report.calibration_report` of the calibrated table).
  """
  points = operating_points.from_json(summary["operating_points"])
  row = points.target_index(target_snr_db)
  policy, full, oracle = (
    points.column("probabilistic", confidence),
    points.column("fixed", -1),
    points.column("oracle"),
  )
  weights = operating_points.bootstrap_weights(len(table.ids))
  si_snri_low, si_snri_high = _interval(operating_points.bootstrap_means(weights, table.si_snri.T))
  targets = sorted({*stopping.TARGETS_DB, float(target_snr_db)})
  pooled = calibration_report.calibration_report(
    table,
    gmacs_per_second=summary["gmacs_per_second_by_exit"],
    targets=targets,
    confidences=(confidence,),
  )["pooled"]
  ece_low, ece_high = _interval(calibration_report.resampled_ece(table, weights, targets=targets))

  def at(name, column=policy):
    return getattr(points, name)[row, column].item()

  return evaluate.json_ready(
    {
      "num_utterances": len(table.ids),
      "si_snri": table.si_snri.mean(axis=0).tolist(),
      "si_snri_low": si_snri_low,
      "si_snri_high": si_snri_high,
      **{name: at(name) for name in ("reach", "reach_low", "reach_high", "stopped_early")},
      "full_depth_reach": at("reach", full),
      **{name: at(name) for name in ("satisfaction", "satisfaction_low", "satisfaction_high")},
      "saved": at("saved"),
      "oracle_saved": at("saved", oracle),
      "oracle_share": at("oracle_share"),
      "predicted": float(table.probability[:, -1, table.target_index(target_snr_db)].mean()),
      "observed": float(np.mean(table.snr_min[:, -1] >= target_snr_db)),
      **{key: pooled[key] for key in ("ece_mean", "ks", "crps")},
      "ece_mean_low": ece_low,
      "ece_mean_high": ece_high,
    }
  )


def paired_differences(values, reference_values):
  """Mean differences `values − reference_values` `[columns]` over paired utterances,
  with their bootstrap interval.

  Args:
    values, reference_values: `[utterances, columns]`, row `i` of both the same utterance.

  Returns:
    `{"difference", "low", "high"}`, each `[columns]`.
  """
  differences = np.asarray(values, np.float64) - np.asarray(reference_values, np.float64)
  weights = operating_points.bootstrap_weights(len(differences))
  low, high = _interval(operating_points.bootstrap_means(weights, differences.T))
  return {"difference": differences.mean(axis=0).tolist(), "low": low, "high": high}


# ----------------------------------------------------------------------------------
# The comparison: table and figures.


def _table_lines(header, rows):
  """A Markdown table's lines: `header` `[columns]`, `rows` `[rows][columns]` str."""
  return [f"| {' | '.join(cells)} |" for cells in (header, ["---"] * len(header), *rows)]


def _cell(value, digits=2):
  return "–" if value is None else f"{value:.{digits}f}"


def markdown_table(comparison):
  """The comparison as Markdown: a row per variant, measures as `before → after`."""
  settings = comparison["settings"]
  depths = range(1, settings["num_exits"] + 1)
  target, confidence = settings["target_snr_db"], settings["confidence"]
  header = (
    ["variant"]
    + [f"SI-SNRi exit {d} (dB)" for d in depths]
    + ["GMAC/s (last exit)"]
    + list(MEASURES.values())
    + [f"satisfaction γ={target:g} dB, p={confidence:g} (n)", "certified λ"]
  )
  lines = [
    f"# Variance parameterisation ablation: {settings['steps']} steps"
    + (" (smoke size)" if settings["smoke"] else ""),
    "",
    "Calibration measures are pooled over each variant's exits, before → after "
    "post-hoc calibration (fitted on half the validation split). Satisfaction: the "
    "share of the test utterances that stopped with P(SNR ≥ γ) ≥ p whose worst "
    "source reached γ, and how many stopped so (–: none).",
    "",
  ]
  rows = []
  for entry in comparison["variants"]:
    row = entry["row"]
    cells = [row["variant"]] + [_cell(row[f"si_snri_exit_{d}"]) for d in depths]
    cells.append(_cell(row["gmacs_per_second"], 3))
    cells += [
      f"{_cell(row[f'{key}_before'], 3)} → {_cell(row[f'{key}_after'], 3)}" for key in MEASURES
    ]
    cells.append(
      " → ".join(
        f"{_cell(row[f'satisfaction_{when}'])} ({row[f'exited_{when}']})"
        for when in ("before", "after")
      )
    )
    cells.append(_cell(row["threshold"], 3))
    rows.append(cells)
  lines += _table_lines(header, rows)
  for name in comparison["variants"][0]["sets"]:
    lines += ["", *_set_table(comparison, name)]
  return "\n".join(lines) + "\n"


def _with_interval(value, low, high, digits=2, scale=1, signed=False):
  """`value [low, high]`, each scaled by `scale`; "–" for None."""
  if value is None:
    return "–"
  spec = f"{'+' if signed else ''}.{digits}f"
  return f"{scale * value:{spec}} [{scale * low:{spec}}, {scale * high:{spec}}]"


def _satisfaction_cell(measured):
  share = _with_interval(
    measured["satisfaction"],
    measured["satisfaction_low"],
    measured["satisfaction_high"],
    digits=0,
    scale=100,
  )
  return f"{share} ({measured['stopped_early']})"


def _ece_cell(measured):
  return _with_interval(
    measured["ece_mean"], measured["ece_mean_low"], measured["ece_mean_high"], digits=3
  )


def _set_table(comparison, name):
  """The lines of one report set's table: per variant, SI-SNRi per exit and its
  difference from the reference variant at the same depth, with 95% intervals, and the
  probabilistic policy and calibration at the comparison's `(γ, p)`."""
  settings = comparison["settings"]
  depths = range(1, settings["num_exits"] + 1)
  target, confidence = settings["target_snr_db"], settings["confidence"]
  entries = [entry for entry in comparison["variants"] if name in entry["sets"]]
  first = entries[0]["sets"][name]
  header = (
    ["variant"]
    + [f"SI-SNRi exit {d} (dB)" for d in depths]
    + [f"− reference, exit {d} (dB)" for d in depths]
    + [
      "reach, policy / full depth (%)",
      "satisfaction (%, n)",
      "saved / oracle's (%)",
      f"P(SNR ≥ {target:g} dB) last exit: predicted / observed",
      "ECE",
      "CRPS (dB)",
    ]
  )
  lines = [
    f"## {name} ({first['num_utterances']} utterances), γ = {target:g} dB, p = {confidence:g}",
    "",
    "Post-hoc calibrated (fitted on the validation split). Intervals are 95%: bootstrap "
    "over utterances for SI-SNRi, ECE and paired differences, Clopper–Pearson for shares. "
    "A difference is the variant's exit minus the reference variant's exit of the same "
    "depth, on the same utterances.",
    "",
  ]
  rows = []
  for entry in entries:
    measured = entry["sets"][name]
    by_depth = dict(zip(entry["depths"], range(len(entry["depths"]))))
    differences = entry.get("differences", {}).get(name)
    cells = [entry["variant"]]
    for d in depths:
      k = by_depth.get(d)
      cells.append(
        "–"
        if k is None
        else _with_interval(
          measured["si_snri"][k], measured["si_snri_low"][k], measured["si_snri_high"][k]
        )
      )
    for d in depths:
      k = by_depth.get(d)
      cells.append(
        "–"
        if k is None or differences is None
        else _with_interval(
          differences["difference"][k], differences["low"][k], differences["high"][k]
        )
      )
    cells += [
      f"{_cell(100 * measured['reach'], 0)} / {_cell(100 * measured['full_depth_reach'], 0)}",
      "–" if measured["satisfaction"] is None else _satisfaction_cell(measured),
      f"{_cell(100 * measured['saved'], 0)} / {_cell(100 * measured['oracle_saved'], 0)}",
      f"{_cell(measured['predicted'])} / {_cell(measured['observed'])}",
      _ece_cell(measured),
      _cell(measured["crps"]),
    ]
    rows.append(cells)
  return lines + _table_lines(header, rows)


def _difference_cell(entry, set_name, column=-1):
  differences = entry.get("differences", {}).get(set_name)
  if differences is None:
    return "(reference)"
  return _with_interval(
    *(differences[key][column] for key in ("difference", "low", "high")), signed=True
  )


def headline_markdown(comparison, unseen_set="kokoro"):
  """The answer in two tables, as docs/calibration.md quotes it: per multi-exit
  variant, the last exit's SI-SNRi on the test split and on `unseen_set` with its
  difference from the reference, calibration after post-hoc scales, and the last
  exit's predicted against observed `P(SNR ≥ γ)` on `unseen_set`; then each
  single-exit baseline against the joint network's exit of its depth, per report set."""
  settings = comparison["settings"]
  target = settings["target_snr_db"]
  sets = list(comparison["variants"][0]["sets"])
  multi = [entry for entry in comparison["variants"] if entry["kind"] != "single-exit"]
  rows = []
  for entry in multi:
    test, unseen = entry["sets"]["test"], entry["sets"][unseen_set]
    rows.append(
      [
        entry["variant"],
        f"{test['si_snri'][-1]:.2f}",
        _difference_cell(entry, "test"),
        f"{unseen['si_snri'][-1]:.2f}",
        _difference_cell(entry, unseen_set),
        _ece_cell(test),
        f"{entry['row']['crps_after']:.2f}",
        f"{unseen['predicted']:.2f} / {unseen['observed']:.2f}",
      ]
    )
  lines = _table_lines(
    [
      "variant",
      "SI-SNRi, test (dB)",
      "− reference [95%]",
      f"SI-SNRi, {unseen_set} (dB)",
      "− reference [95%]",
      "ECE, test [95%]",
      "CRPS, test (dB)",
      f"{unseen_set}: P(SNR ≥ {target:g} dB) predicted / observed",
    ],
    rows,
  )
  baselines = [entry for entry in comparison["variants"] if entry["kind"] == "single-exit"]
  rows = [
    [str(entry["depths"][-1]), entry["variant"], *(_difference_cell(entry, name) for name in sets)]
    for entry in baselines
  ]
  lines += [
    "",
    *_table_lines(["depth", "baseline", *(f"− joint exit, {n} (dB)" for n in sets)], rows),
  ]
  return "\n".join(lines) + "\n"


def replicates_markdown(comparisons, set_name="test"):
  """The last exit's SI-SNRi on `set_name` of the variants several ablations share, a
  row per ablation (`{label: comparison}`, e.g. one per seed), with its bootstrap
  interval over utterances: how far runs move with what the intervals do not cover."""
  shared = [
    entry["variant"]
    for entry in next(iter(comparisons.values()))["variants"]
    if all(
      any(other["variant"] == entry["variant"] for other in comparison["variants"])
      for comparison in comparisons.values()
    )
  ]
  rows = []
  for label, comparison in comparisons.items():
    by_name = {entry["variant"]: entry["sets"][set_name] for entry in comparison["variants"]}
    rows.append(
      [label]
      + [
        _with_interval(
          by_name[name]["si_snri"][-1],
          by_name[name]["si_snri_low"][-1],
          by_name[name]["si_snri_high"][-1],
        )
        for name in shared
      ]
    )
  header = ["run", *(f"{name}: SI-SNRi, {set_name}, last exit (dB)" for name in shared)]
  return "\n".join(_table_lines(header, rows)) + "\n"


def _variant_styles(comparison):
  """A colour per variant, from a qualitative colour map."""
  colours = matplotlib.colormaps["tab20"].colors
  return {
    entry["variant"]: colours[i % len(colours)] for i, entry in enumerate(comparison["variants"])
  }


def _plot_by_depth(ax, comparison, key, colours, when=None):
  """`key` (or `{key}_{when}`) against exit depth: a line per multi-exit variant, and
  the single-exit baselines as one black series of squares. Lines before post-hoc
  calibration are dashed and unlabelled."""
  field = key if when is None else f"{key}_{when}"
  style, labelled = ("--", False) if when == "before" else ("-", True)
  baselines = []
  for entry in comparison["variants"]:
    points = [(e["depth"], e[field]) for e in entry["per_exit"]]
    if entry["kind"] == "single-exit":
      baselines += points
    else:
      ax.plot(
        *zip(*points),
        "o" + style,
        markersize=3,
        color=colours[entry["variant"]],
        label=entry["variant"] if labelled else None,
      )
  if baselines:
    ax.plot(
      *zip(*sorted(baselines)),
      "s" + style,
      color="k",
      label="single-exit baselines" if labelled else None,
    )
  ax.set_xticks(range(1, comparison["settings"]["num_exits"] + 1))
  ax.set_xlabel("exit (depth in stages)")


def si_snri_figure(comparison):
  """SI-SNRi against exit depth: a line per variant, the single-exit baselines in black."""
  fig = figure.Figure(figsize=(7, 4.5), layout="constrained")
  ax = fig.subplots()
  _plot_by_depth(ax, comparison, "si_snri", _variant_styles(comparison))
  ax.set(ylabel="SI-SNRi (dB)", title="SI-SNRi per exit (test split)")
  ax.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
  return fig


def calibration_figure(comparison):
  """ECE, KS and CRPS against exit depth, a panel each: after post-hoc calibration
  solid, before dashed, a colour per variant, the single-exit baselines in black."""
  colours = _variant_styles(comparison)
  fig = figure.Figure(figsize=(13, 4), layout="constrained")
  axes = fig.subplots(1, 3)
  for ax, key in zip(axes, ("ece_mean", "ks", "crps")):
    for when in ("after", "before"):
      _plot_by_depth(ax, comparison, key, colours, when=when)
    ax.set(ylabel=MEASURES[key], title=f"{MEASURES[key]} per exit (dashed: before post-hoc)")
    ax.title.set_fontsize("small")
  axes[-1].legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
  return fig


def _set_panels(comparison, width=4.2, height=4.0):
  """A figure with a panel per report set, and the sets' names."""
  names = list(comparison["variants"][0]["sets"])
  fig = figure.Figure(figsize=(width * len(names), height), layout="constrained")
  return fig, fig.subplots(1, len(names), squeeze=False)[0], names


def differences_figure(comparison):
  """Per report set, each variant's SI-SNRi minus its reference's at the same depth,
  with its 95% interval: at the last exit of a multi-exit variant, at the one exit of
  a single-exit baseline. Left of zero, the reference (every exit trained jointly, the
  base variance head) is better."""
  fig, axes, names = _set_panels(comparison, height=0.3 * len(comparison["variants"]) + 1.2)
  compared = [entry for entry in comparison["variants"] if entry.get("differences")]
  labels = [
    f"{entry['variant']} (exit at depth {entry['depths'][-1]})"
    if entry["kind"] == "single-exit"
    else entry["variant"]
    for entry in compared
  ]
  for ax, name in zip(axes, names):
    rows = [entry["differences"][name] for entry in compared]
    value = np.array([row["difference"][-1] for row in rows])
    low = np.array([row["low"][-1] for row in rows])
    high = np.array([row["high"][-1] for row in rows])
    y = np.arange(len(rows))
    ax.errorbar(value, y, xerr=[value - low, high - value], fmt="o", color="k", capsize=3)
    ax.axvline(0.0, color="0.6", linewidth=1)
    ax.set_yticks(y, labels if ax is axes[0] else [""] * len(y), fontsize="small")
    ax.invert_yaxis()
    ax.set(xlabel="SI-SNRi − reference's (dB)", title=name)
  fig.suptitle(
    f"Against {compared[0]['reference'] if compared else 'the reference'}, same "
    "utterances, 95% bootstrap intervals",
    fontsize="small",
  )
  return fig


def honesty_figure(comparison):
  """Per report set, each variant's last exit: the mean predicted `P(SNR ≥ γ)` against
  the share of utterances that reach `γ`, after post-hoc calibration. On the diagonal
  the probabilities keep their promise on average; the band is ±0.1."""
  settings = comparison["settings"]
  colours = _variant_styles(comparison)
  fig, axes, names = _set_panels(comparison)
  for ax, name in zip(axes, names):
    ax.fill_between([0, 1], [-0.1, 0.9], [0.1, 1.1], color="0.9")
    ax.plot([0, 1], [0, 1], color="0.5", linewidth=1)
    for entry in comparison["variants"]:
      measured = entry["sets"][name]
      if measured["predicted"] is None:  # No probability to promise (written as null).
        continue
      ax.plot(
        measured["observed"],
        measured["predicted"],
        "s" if entry["kind"] == "single-exit" else "o",
        color=colours[entry["variant"]],
        label=entry["variant"],
      )
    ax.set(
      xlim=(0, 1),
      ylim=(0, 1),
      xlabel=f"share reaching {settings['target_snr_db']:g} dB",
      ylabel="mean predicted probability",
      title=name,
    )
  axes[-1].legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
  return fig


def write_comparison(out_dir, comparison):
  """Writes `FILES` to `out_dir`, all or nothing (`files.atomic_writes`): the table as
  Markdown, CSV (one row per variant) and JSON (everything, per-exit values included),
  and the figures; returns their paths."""
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  paths = {kind: out_dir / name for kind, name in FILES.items()}
  rows = [entry["row"] for entry in comparison["variants"]]
  table = io.StringIO(newline="")
  writer = csv.DictWriter(table, fieldnames=list(rows[0]))
  writer.writeheader()
  writer.writerows(
    {name: "" if value is None else value for name, value in row.items()} for row in rows
  )
  with files.atomic_writes(paths) as partials:
    partials["markdown"].write_text(markdown_table(comparison))
    partials["json"].write_text(
      json.dumps(evaluate.json_ready(comparison), indent=2, allow_nan=False)
    )
    partials["csv"].write_text(table.getvalue())
    si_snri_figure(comparison).savefig(partials["si_snri"], dpi=120)
    calibration_figure(comparison).savefig(partials["calibration"], dpi=120)
    differences_figure(comparison).savefig(partials["differences"], dpi=120)
    honesty_figure(comparison).savefig(partials["honesty"], dpi=120)
  return paths


def load_comparison(out_dir):
  """The comparison `write_comparison` wrote to `out_dir` (its `comparison.json`)."""
  return json.loads((pathlib.Path(out_dir) / FILES["json"]).read_text())
