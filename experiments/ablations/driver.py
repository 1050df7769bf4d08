"""The variance-parameterisation ablation's driver: trains, evaluates and calibrates each
variant of `eesep_jax.analysis.ablation.variants`, and writes their comparison.

    from experiments.ablations import driver  # the repository root on sys.path
    comparison = driver.run_ablation("eesep_jax/configs/demo.py", "runs/ablation-smoke",
                                     smoke=True)
    # or: python experiments/ablations/variance_parameterisations.py --smoke --out ...

Each variant is trained with `train.train_and_evaluate` in `OUT/<variant>/`, then
`calibration_report.calibrate_checkpoint` (what `eesep calibrate` runs) evaluates it on
the validation and test splits and writes its report to `OUT/<variant>/calibration/`;
`ablation.summarise` makes its entry of the comparison, which `ablation.write_comparison`
writes. A variant whose `OUT/<variant>/result.json` was made with the same config and
settings is loaded instead, and training is skipped when the run already holds its last
step, so an interrupted ablation resumes where it stopped.

At smoke size (`smoke=True`) the base config runs a few short steps on a small corpus
whose validation and test utterances all last `SMOKE_EVAL_SECONDS`: one length keeps
a variant's evaluation to one compilation. Smoke numbers check the plumbing, not the method.
"""

import functools
import json
import pathlib
import shutil
import tempfile

import jax

from eesep_jax import config_lib
from eesep_jax import data
from eesep_jax import files
from eesep_jax import runs
from eesep_jax.analysis import ablation
from eesep_jax.analysis import calibration_report
from eesep_jax.analysis import evaluate
from eesep_jax.analysis import exit_table
from eesep_jax.data import audio
from eesep_jax.training import checkpoints
from eesep_jax.training import train

RESULT_FILE = "result.json"
CALIBRATION_DIR = "calibration"
# A variant's evaluation of report set NAME (`data.report_configs`) goes to
# `OUT/<variant>/evaluation_NAME/`.
EVALUATION_DIR = "evaluation_{}"
CORPUS_DIR = "corpus"

SMOKE_STEPS = 10
SMOKE_SIZES = {"num_train": 16, "num_valid": 6, "num_test": 6}
SMOKE_EVAL_SECONDS = 1.0
SMOKE_TARGET_SNR_DB = 1.0  # What a few steps of training reach.
# The smallest ablation that has both kinds of run, a multi-exit one and a single-exit
# baseline: what the notebooks and tests run at smoke size.
SMOKE_SUBSET = ("student-snr", "single-exit-1")
_SMOKE_DONE = "smoke_corpus.json"


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
  rate = manifest["arguments"]["sample_rate"]
  length = round(SMOKE_EVAL_SECONDS * rate)
  for split in ("cv", "tt"):
    for path in sorted((partial / split).glob("*/*.wav")):
      audio.write_audio(path, data.read_audio(path, rate)[:length], rate)
  (partial / _SMOKE_DONE).write_text(json.dumps({"eval_seconds": SMOKE_EVAL_SECONDS}))
  partial.rename(root)
  return root


def smoke_overrides(corpus_root, steps=SMOKE_STEPS):
  """Overrides that shrink the demo config to `steps` short steps of a network with one
  shared block on `corpus_root`."""
  return [
    f"data.root={corpus_root}",
    "data.synthesize_if_missing=False",
    "model.num_shared_blocks=1",
    "data.segment_seconds=0.5",
    "batch_size=4",
    f"steps={steps}",
    f"checkpoint_every={steps}",
    f"eval_every={steps}",
    "log_every=5",
    "eval_max_utterances=1",
    "optimizer.warmup_steps=5",
  ]


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
  workdir = directory / ablation.variance_name(config_lib.model_config(config).variance)
  train_variant(config, workdir)
  return workdir


# ----------------------------------------------------------------------------------
# Running the variants.


def train_variant(config, workdir):
  """Trains `config` in `workdir`, unless the run there already holds its last step."""
  if checkpoints.latest_step(workdir) != config.steps:
    train.train_and_evaluate(config, workdir)


def _variant_result(variant, config, workdir, *, base_model_config, settings, progress):
  """Trains, calibrates and evaluates one variant, unless its saved reports answer the
  same request, and summarises them."""
  path = workdir / RESULT_FILE
  request = {"config": json.loads(config.to_json_best_effort()), **settings}
  if not (path.is_file() and json.loads(path.read_text())["request"] == request):
    train_variant(config, workdir)
    report, _ = calibration_report.calibrate_checkpoint(
      workdir,
      workdir / CALIBRATION_DIR,
      # The ablation compares the parameterisations' predicted laws, which a
      # likelihood fit serves and a decision fit does not (docs/calibration.md).
      method="nll",
      target_snr_db=settings["target_snr_db"],
      confidences=sorted({*config.evaluation.confidences, settings["confidence"]}),
      max_utterances=settings["max_utterances"],
      progress=progress,
    )
    run = runs.load(workdir)
    report_configs = data.report_configs(config)
    for name in settings["report_sets"]:
      table, summary = evaluate.evaluate_model(
        run.variables,
        run.model_config,
        data.open_split(report_configs[name], config.data.test_split),
        posthoc_scales=report["posthoc"]["scales"],
        target_snr_db=settings["target_snr_db"],
        confidence=settings["confidence"],
        max_utterances=settings["max_utterances"],
        enhancement_metrics=False,
        progress=progress,
      )
      evaluate.write_report(workdir / EVALUATION_DIR.format(name), table, summary)
    files.write_text(path, json.dumps({"request": request}, indent=2))
  # Summarised from the saved reports on every pass, resumed or not: cheap next to
  # evaluating, and always by the current summary code.
  sets = {}
  for name in settings["report_sets"]:
    folder = workdir / EVALUATION_DIR.format(name)
    sets[name] = ablation.set_summary(
      exit_table.load(folder / evaluate.TABLE_FILE),
      json.loads((folder / evaluate.JSON_FILE).read_text()),
      target_snr_db=settings["target_snr_db"],
      confidence=settings["confidence"],
    )
  return ablation.summarise(
    variant,
    config,
    json.loads((workdir / CALIBRATION_DIR / calibration_report.JSON_FILE).read_text()),
    base_model_config=base_model_config,
    target_snr_db=settings["target_snr_db"],
    confidence=settings["confidence"],
    sets=sets,
  )


def _with_differences(out_dir, entries):
  """`entries` with `differences` `{set: ablation.paired_differences}` of each variant's
  SI-SNRi per exit against its reference's exit of the same depth, on the same
  utterances (read back from each variant's evaluation tables)."""
  by_name = {entry["variant"]: entry for entry in entries}

  @functools.cache
  def si_snri(name, set_name):
    table = exit_table.load(out_dir / name / EVALUATION_DIR.format(set_name) / evaluate.TABLE_FILE)
    return dict(zip(table.ids, table.si_snri))

  for entry in entries:
    reference = by_name.get(entry["reference"])
    # Once a variant's differences are in, they stand: its reference's tables are done.
    if reference is None or "differences" in entry:
      continue
    column = {depth: k for k, depth in enumerate(reference["depths"])}
    columns = [column[depth] for depth in entry["depths"]]
    entry["differences"] = {}
    for set_name in entry["sets"]:
      ours, theirs = si_snri(entry["variant"], set_name), si_snri(reference["variant"], set_name)
      ids = sorted(ours)
      entry["differences"][set_name] = ablation.paired_differences(
        [ours[i] for i in ids], [theirs[i][columns] for i in ids]
      )
  return entries


def run_ablation(
  config_path,
  out_dir,
  *,
  names=None,
  overrides=(),
  smoke=False,
  steps=None,
  max_utterances=None,
  target_snr_db=None,
  confidence=None,
  progress=True,
  log=print,
):
  """Trains, evaluates and calibrates every variant, and writes the comparison.

  Args:
    config_path: the base experiment config file.
    out_dir: where each variant's run (`OUT/<variant>/`) and the comparison go.
    names: the variants to run (`ablation.variants`' names), in this order; None: all.
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
    The comparison (`ablation.write_comparison`'s input): `settings` and `variants`,
    the `ablation.summarise` entry of each.
  """
  out_dir = pathlib.Path(out_dir)
  base = list(overrides)
  if smoke:
    base = smoke_overrides(smoke_corpus(out_dir / CORPUS_DIR), steps or SMOKE_STEPS) + base
  elif steps:
    base.append(f"steps={steps}")
  base_config = config_lib.load_config(config_path, base)
  data.ensure_report_sets(base_config, progress=progress)
  base_model_config = config_lib.model_config(base_config)
  chosen = ablation.select_variants(ablation.variants(base_model_config), names)
  if target_snr_db is None:
    target_snr_db = SMOKE_TARGET_SNR_DB if smoke else base_config.inference.target_snr_db
  if confidence is None:
    confidence = base_config.inference.confidence
  settings = {
    "target_snr_db": float(target_snr_db),
    "confidence": float(confidence),
    "max_utterances": max_utterances,
    # The smoke corpus's test split is its only report set.
    "report_sets": [data.TEST_SET] if smoke else list(data.report_configs(base_config)),
  }
  comparison_settings = {
    "config": str(config_path),
    "overrides": base,
    "steps": base_config.steps,
    "smoke": smoke,
    "num_exits": base_model_config.num_exits,
    **settings,
  }
  entries = []
  for index, variant in enumerate(chosen, start=1):
    log(f"[{index}/{len(chosen)}] {variant.name}: {variant.description}")
    config = config_lib.load_config(config_path, [*base, *variant.overrides])
    entries.append(
      _variant_result(
        variant,
        config,
        out_dir / variant.name,
        base_model_config=base_model_config,
        settings=settings,
        progress=progress,
      )
    )
    # Each variant compiles its own programs; kept, they exhaust the process's memory
    # maps after about ten variants (LLVM: "Cannot allocate memory", then SIGSEGV).
    jax.clear_caches()
    # Written after every variant: an interrupted ablation leaves the comparison of
    # the variants done so far.
    comparison = {
      "settings": {**comparison_settings, "variants_done": f"{index} of {len(chosen)}"},
      "variants": _with_differences(out_dir, entries),
    }
    ablation.write_comparison(out_dir, comparison)
  return comparison
