"""The variance-parameterisation ablation: train, evaluate and calibrate named variants.

    comparison = ablation.run_ablation("eesep_jax/configs/demo.py", "runs/ablation-smoke",
                                       smoke=True)
    # or: python experiments/ablations/variance_parameterisations.py --smoke --out ...

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

Each variant is trained with `train.train_and_evaluate` in `OUT/<variant>/`, then
`calibration_report.calibrate_checkpoint` (what `eesep calibrate` runs) evaluates it on
the validation and test splits and writes its report to `OUT/<variant>/calibration/`.
A variant whose `OUT/<variant>/result.json` was made with the same config and settings
is loaded instead, and training is skipped when the run already holds its last step,
so an interrupted ablation resumes where it stopped. `write_comparison` writes one
table (`comparison.md`, `.csv`, `.json`) and figures.

At smoke size (`smoke=True`) the base config runs a few short steps on a small corpus
whose validation and test utterances all last `SMOKE_EVAL_SECONDS`: one length keeps
a variant's evaluation to one compilation. Smoke numbers check the plumbing, not the method.
"""

import csv
import dataclasses
import json
import pathlib
import shutil
import tempfile

import matplotlib
from matplotlib import figure
import soundfile

from eesep_jax import config_lib
from eesep_jax import data
from eesep_jax.analysis import calibration_report
from eesep_jax.analysis import evaluate
from eesep_jax.core import probabilistic
from eesep_jax.training import checkpoints
from eesep_jax.training import train

RESULT_FILE = "result.json"
CALIBRATION_DIR = "calibration"
CORPUS_DIR = "corpus"
FILES = {"markdown": "comparison.md", "csv": "comparison.csv", "json": "comparison.json",
         "si_snri": "si_snri_per_exit.png", "calibration": "calibration_per_exit.png"}
# Measures of the table, each before and after post-hoc calibration: the calibration
# report's key and the Markdown header.
MEASURES = {"nll": "NLL", "ece_mean": "ECE", "ks": "KS", "crps": "CRPS (dB)"}

SMOKE_STEPS = 10
SMOKE_SIZES = {"num_train": 16, "num_valid": 6, "num_test": 6}
SMOKE_EVAL_SECONDS = 1.0
SMOKE_TARGET_SNR_DB = 1.0  # What a few steps of training reach.
# The smallest ablation that has both kinds of run, a multi-exit one and a single-exit
# baseline: what the notebooks and tests run at smoke size.
SMOKE_SUBSET = ("student-snr", "single-exit-1")
_SMOKE_DONE = "smoke_corpus.json"


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
  variance = probabilistic.VarianceConfig(parameterisation=parameterisation,
                                          monotone=monotone)
  return Variant(variance_name(variance), "variance",
                 f"{parameterisation} head" + (", monotone over exits" if monotone else ""),
                 (f"model.variance.parameterisation={parameterisation}",
                  f"model.variance.monotone={monotone}"))


def variants(model_config):
  """Every variant of the ablation for a base model (`config_lib.model_config`).

  The five parameterisations without `monotone`, the base model's with it, the
  single-exit baselines of every depth, and the per-exit permutation. The last two
  kinds keep the base model's variance head: the variance variant of the same name
  (`variance_name`) is their reference.
  """
  result = [_variance_variant(parameterisation, False)
            for parameterisation in probabilistic.PARAMETERISATIONS]
  result.append(_variance_variant(model_config.variance.parameterisation, True))
  num_exits = model_config.num_exits
  for depth in range(1, num_exits + 1):
    result.append(Variant(
        f"single-exit-{depth}", "single-exit",
        f"a network of {depth} of {num_exits} stages with one exit, trained alone",
        ("model.num_exits=1", f"model.num_exit_blocks={depth * model_config.blocks_per_stage}",
         "loss.exit_weights=None")))
  result.append(Variant("per-exit-permutation", "permutation",
                        "each exit picks its own permutation", ("loss.permutation=per-exit",)))
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
# Smoke size.


def smoke_corpus(root):
  """A small corpus at `root` (`SMOKE_SIZES`), made unless there; returns `root`.

  Its validation and test utterances are cut to their first `SMOKE_EVAL_SECONDS` (a
  mixture and its sources alike), so that evaluation compiles once.
  """
  root = pathlib.Path(root)
  if (root / _SMOKE_DONE).is_file():
    return root
  # Made aside and renamed when complete, so an interrupted run leaves no half corpus.
  partial = root.with_name(root.name + ".partial")
  shutil.rmtree(partial, ignore_errors=True)
  manifest = data.synthesize_corpus(partial, progress=False, **SMOKE_SIZES)
  length = round(SMOKE_EVAL_SECONDS * manifest["arguments"]["sample_rate"])
  for split in ("cv", "tt"):
    for path in sorted((partial / split).glob("*/*.wav")):
      audio, rate = soundfile.read(path, dtype="int16")
      soundfile.write(path, audio[:length], rate, subtype="PCM_16")
  (partial / _SMOKE_DONE).write_text(json.dumps({"eval_seconds": SMOKE_EVAL_SECONDS}))
  partial.rename(root)
  return root


def smoke_overrides(corpus_root, steps=SMOKE_STEPS):
  """Overrides that shrink the demo config to `steps` short steps of a network with one
  shared block on `corpus_root`."""
  return [f"data.root={corpus_root}", "data.synthesize_if_missing=False",
          "model.num_shared_blocks=1",
          "data.segment_seconds=0.5", "batch_size=4", f"steps={steps}",
          f"checkpoint_every={steps}", f"eval_every={steps}", "log_every=5",
          "eval_max_utterances=1", "optimizer.warmup_steps=5"]


def smoke_run(config_path, directory=None):
  """The base config trained at smoke size, as the ablation's smoke run trains it.

  The corpus goes to `directory/corpus` and the run to `directory/<variance_name>`;
  so `directory` may be an ablation's `--smoke` output, whose reference run is then
  reused. None: a new temporary folder.

  Returns:
    The run's workdir.
  """
  directory = pathlib.Path(directory or tempfile.mkdtemp(prefix="eesep-smoke-"))
  corpus = smoke_corpus(directory / CORPUS_DIR)
  config = config_lib.load_config(config_path, smoke_overrides(corpus))
  workdir = directory / variance_name(config_lib.model_config(config).variance)
  train_variant(config, workdir)
  return workdir


# ----------------------------------------------------------------------------------
# Running the variants.


def train_variant(config, workdir):
  """Trains `config` in `workdir`, unless the run there already holds its last step."""
  if checkpoints.latest_step(workdir) != config.steps:
    train.train_and_evaluate(config, workdir)


def _per_exit(report, depth_of_exit):
  """`[{depth, gmacs_per_second, si_snri, <measure>_before, <measure>_after}]`."""
  return [{"depth": depth, "gmacs_per_second": before["gmacs_per_second"],
           "si_snri": before["si_snri"],
           **{f"{key}_{when}": entry[key] for key in MEASURES
              for when, entry in (("before", before), ("after", after))}}
          for depth, before, after in zip(depth_of_exit, report["before"]["per_exit"],
                                          report["after"]["per_exit"])]


def _satisfaction(measures, target_snr_db, confidence):
  """`(share, count)` of the target satisfaction entry of `(γ, p)`."""
  [entry] = [entry for entry in measures["target_satisfaction"]
             if entry["target_snr_db"] == target_snr_db and entry["confidence"] == confidence]
  return entry["share"], entry["count"]


def summarise(variant, config, report, *, base_model_config, target_snr_db, confidence):
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
    `threshold` and `num_utterances`.
  """
  model_config = config_lib.model_config(config)
  stage = model_config.blocks_per_stage / base_model_config.blocks_per_stage
  depth_of_exit = [round(stage * k) for k in range(1, model_config.num_exits + 1)]
  per_exit = _per_exit(report, depth_of_exit)
  si_snri = {entry["depth"]: entry["si_snri"] for entry in per_exit}
  row = {"variant": variant.name, "description": variant.description,
         "parameterisation": model_config.variance.parameterisation,
         "monotone": model_config.variance.monotone,
         "permutation": config.loss.permutation, "num_exits": model_config.num_exits,
         **{f"si_snri_exit_{depth}": si_snri.get(depth)
            for depth in range(1, base_model_config.num_exits + 1)},
         "gmacs_per_second": per_exit[-1]["gmacs_per_second"]}
  for when in ("before", "after"):
    row.update({f"{key}_{when}": report[when]["pooled"][key] for key in MEASURES})
  for when in ("before", "after"):
    share, count = _satisfaction(report[when], target_snr_db, confidence)
    row.update({f"satisfaction_{when}": share, f"exited_{when}": count})
  row.update(threshold=report["guarantee"]["threshold"],
             num_utterances=report["num_utterances"])
  reference = None if variant.kind == "variance" else variance_name(model_config.variance)
  return evaluate.json_ready({"variant": variant.name, "kind": variant.kind,
                              "reference": reference, "description": variant.description,
                              "overrides": list(variant.overrides), "per_exit": per_exit,
                              "row": row})


def _variant_result(variant, config, workdir, *, base_model_config, settings, progress):
  """Trains, calibrates and summarises one variant, or loads its saved result."""
  path = workdir / RESULT_FILE
  request = {"config": json.loads(config.to_json_best_effort()), **settings}
  if path.is_file():
    saved = json.loads(path.read_text())
    if saved["request"] == request:
      return saved["entry"]
  train_variant(config, workdir)
  report, _ = calibration_report.calibrate_checkpoint(
      workdir, workdir / CALIBRATION_DIR, target_snr_db=settings["target_snr_db"],
      confidences=sorted({*config.evaluation.confidences, settings["confidence"]}),
      max_utterances=settings["max_utterances"], progress=progress)
  entry = summarise(variant, config, report, base_model_config=base_model_config,
                    target_snr_db=settings["target_snr_db"], confidence=settings["confidence"])
  path.write_text(json.dumps({"request": request, "entry": entry}, indent=2))
  return entry


def run_ablation(config_path, out_dir, *, names=None, overrides=(), smoke=False, steps=None,
                 max_utterances=None, target_snr_db=None, confidence=None,
                 progress=True, log=print):
  """Trains, evaluates and calibrates every variant, and writes the comparison.

  Args:
    config_path: the base experiment config file.
    out_dir: where each variant's run (`OUT/<variant>/`) and the comparison go.
    names: the variants to run (`variants`' names), in this order; None: all.
    overrides: dotted overrides of the base config, applied before the variants'.
    smoke: shrink the base config to `smoke_overrides` on a `smoke_corpus` made in
      `out_dir/corpus`.
    steps: training steps of every variant; None: the config's (`SMOKE_STEPS` when
      `smoke`).
    max_utterances: evaluate at most this many utterances of the validation and of
      the test split; None: all.
    target_snr_db, confidence: the `(γ, p)` whose target satisfaction the table
      reports; `γ` is also the target of the certified threshold. None: the base
      config's (`config.inference`; `γ` is `SMOKE_TARGET_SNR_DB` when `smoke`).
    progress: show progress bars.
    log: called with a line as each variant starts.

  Returns:
    The comparison (`write_comparison`'s input): `settings` and `variants`, the
    `summarise` entry of each.
  """
  out_dir = pathlib.Path(out_dir)
  base = list(overrides)
  if smoke:
    base = smoke_overrides(smoke_corpus(out_dir / CORPUS_DIR), steps or SMOKE_STEPS) + base
  elif steps:
    base.append(f"steps={steps}")
  base_config = config_lib.load_config(config_path, base)
  base_model_config = config_lib.model_config(base_config)
  chosen = select_variants(variants(base_model_config), names)
  if target_snr_db is None:
    target_snr_db = SMOKE_TARGET_SNR_DB if smoke else base_config.inference.target_snr_db
  if confidence is None:
    confidence = base_config.inference.confidence
  settings = {"target_snr_db": float(target_snr_db), "confidence": float(confidence),
              "max_utterances": max_utterances}
  entries = []
  for index, variant in enumerate(chosen, start=1):
    log(f"[{index}/{len(chosen)}] {variant.name}: {variant.description}")
    config = config_lib.load_config(config_path, [*base, *variant.overrides])
    entries.append(_variant_result(variant, config, out_dir / variant.name,
                                   base_model_config=base_model_config, settings=settings,
                                   progress=progress))
  comparison = {"settings": {"config": str(config_path), "overrides": base,
                             "steps": base_config.steps, "smoke": smoke,
                             "num_exits": base_model_config.num_exits, **settings},
                "variants": entries}
  write_comparison(out_dir, comparison)
  return comparison


# ----------------------------------------------------------------------------------
# The comparison: table and figures.


def _cell(value, digits=2):
  return "–" if value is None else f"{value:.{digits}f}"


def markdown_table(comparison):
  """The comparison as Markdown: a row per variant, measures as `before → after`."""
  settings = comparison["settings"]
  depths = range(1, settings["num_exits"] + 1)
  target, confidence = settings["target_snr_db"], settings["confidence"]
  header = (["variant"] + [f"SI-SNRi exit {d} (dB)" for d in depths]
            + ["GMAC/s (last exit)"] + list(MEASURES.values())
            + [f"satisfaction γ={target:g} dB, p={confidence:g} (n)", "certified λ"])
  lines = [f"# Variance parameterisation ablation: {settings['steps']} steps"
           + (" (smoke size)" if settings["smoke"] else ""), "",
           "Calibration measures are pooled over each variant's exits, before → after "
           "post-hoc calibration (fitted on half the validation split). Satisfaction: the "
           "share of the test utterances that stopped with P(SNR ≥ γ) ≥ p whose worst "
           "source reached γ, and how many stopped so (–: none).", "",
           "| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
  for entry in comparison["variants"]:
    row = entry["row"]
    cells = [row["variant"]] + [_cell(row[f"si_snri_exit_{d}"]) for d in depths]
    cells.append(_cell(row["gmacs_per_second"], 3))
    cells += [f"{_cell(row[f'{key}_before'], 3)} → {_cell(row[f'{key}_after'], 3)}"
              for key in MEASURES]
    cells.append(" → ".join(f"{_cell(row[f'satisfaction_{when}'])} ({row[f'exited_{when}']})"
                            for when in ("before", "after")))
    cells.append(_cell(row["threshold"], 3))
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def _variant_styles(comparison):
  """A colour per variant, from a qualitative colour map."""
  colours = matplotlib.colormaps["tab20"].colors
  return {entry["variant"]: colours[i % len(colours)]
          for i, entry in enumerate(comparison["variants"])}


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
      ax.plot(*zip(*points), "o" + style, markersize=3, color=colours[entry["variant"]],
              label=entry["variant"] if labelled else None)
  if baselines:
    ax.plot(*zip(*sorted(baselines)), "s" + style, color="k",
            label="single-exit baselines" if labelled else None)
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


def write_comparison(out_dir, comparison):
  """Writes `FILES` to `out_dir`: the table as Markdown, CSV (one row per variant) and
  JSON (everything, per-exit values included), and the figures; returns their paths."""
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  paths = {kind: out_dir / name for kind, name in FILES.items()}
  paths["markdown"].write_text(markdown_table(comparison))
  paths["json"].write_text(json.dumps(evaluate.json_ready(comparison), indent=2,
                                      allow_nan=False))
  rows = [entry["row"] for entry in comparison["variants"]]
  with paths["csv"].open("w", newline="") as file:
    writer = csv.DictWriter(file, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows({name: "" if value is None else value for name, value in row.items()}
                     for row in rows)
  si_snri_figure(comparison).savefig(paths["si_snri"], dpi=120)
  calibration_figure(comparison).savefig(paths["calibration"], dpi=120)
  return paths


def load_comparison(out_dir):
  """The comparison `run_ablation` wrote to `out_dir` (its `comparison.json`)."""
  return json.loads((pathlib.Path(out_dir) / FILES["json"]).read_text())
