"""The quickstart job behind `make demo`: corpus, training, calibration, evaluation.

    eesep demo --workdir runs/demo

1. builds the embedded corpus under `data/demo` (eSpeak NG and Piper speakers), the
   held-out test set of other languages' voices under `data/heldout`, and the check
   sets of speech no corpus trains on under `data/checks` (`config.data.check_sets`:
   Kokoro-82M's voices, a recorded voice; `data.checksets`), if they are missing;
2. trains `eesep_jax/configs/demo.py` (shipped in the package: `eesep train --config
   demo`) in `WORKDIR`, resuming if a run is there;
3. fits post-hoc calibration of the exit probabilities on the validation split and
   reports calibration on the test split (`WORKDIR/calibration/`);
4. evaluates every exit and every stopping policy, calibrated, on the test split
   (`WORKDIR/evaluation/`), on the held-out voices (`WORKDIR/evaluation_heldout/`)
   and on each check set (`WORKDIR/evaluation_<name>/`);
5. separates one test mixture into `WORKDIR/separated/`;
6. prints SI-SNRi per exit on every set and, at the config's stopping target and
   confidence (`config.inference`; the demo config's target is 5 dB), the compute the
   probabilistic policy saves, its SI-SNRi and its target satisfaction.
"""

import pathlib
import time

import numpy as np

from eesep_jax import config_lib
from eesep_jax import configs
from eesep_jax import data
from eesep_jax.analysis import calibration
from eesep_jax.analysis import calibration_report
from eesep_jax.analysis import evaluate
from eesep_jax.app import separate_files
from eesep_jax.training import checkpoints
from eesep_jax.training import train

# Shipped inside the package, so that `eesep demo` runs from any directory.
DEMO_CONFIG = configs.DIRECTORY / "demo.py"


def locate(path, start=None):
  """`path` if it exists, else `path` under the nearest folder above `start` (default:
  the working directory) that holds it; None when none does.

  How the notebooks find `runs/demo`, `data/demo` and the experiment configs, from the
  repository root or from `notebooks/`, wherever the package is installed.
  """
  start = pathlib.Path(start or pathlib.Path.cwd()).resolve()
  for folder in (start, *start.parents):
    if (folder / path).exists():
      return folder / path
  return None


def run_config(workdir):
  """The config a run saved (`checkpoints.read_config`), a relative `data.root` found as
  `locate` finds it: the demo trains from the repository root with `data/demo`."""
  config = checkpoints.read_config(workdir)
  config.data.root = str(locate(config.data.root) or config.data.root)
  return config


def _per_exit_lines(name, summary):
  per_exit = summary["per_exit"]
  cells = "".join(f"{row['si_snri']:8.2f}" for row in per_exit)
  return f"  {name:<28}{cells}"


def _reached_lines(name, table, target_snr_db):
  """Share of utterances whose worst source reaches the target, per exit."""
  shares = np.mean(table.snr_min >= target_snr_db, axis=0)
  return f"  {name:<28}" + "".join(f"{100 * share:7.0f}%" for share in shares)


def _stopping_lines(summary, report, num_exits, target_snr_db, confidence):
  """The policy's compute, quality and target satisfaction (calibrated) at the config's
  target and confidence."""
  point = next(p for p in summary["policies"]
               if p["policy"] == "probabilistic" and p["target_snr_db"] == target_snr_db
               and p["confidence"] == confidence)
  # On whole utterances, as the compute and SI-SNRi beside it (the report's main
  # figures are in `separate`'s chunks).
  calibrated = report["whole_utterances"]["after"]
  met = next(s for s in calibrated["target_satisfaction"]
             if s["target_snr_db"] == target_snr_db and s["confidence"] == confidence)
  full = summary["per_exit"][-1]
  # `max` with 0.0 first: when nothing is saved, `1 - x / x` is -0.0, printed "-0%".
  saved = max(0.0, 100 * (1 - point["gmacs_per_second"] / full["gmacs_per_second"]))
  share = ("no utterance stopped early" if not met["count"] else
           f"{100 * met['share']:.0f}% of the {met['count']} utterances that stopped "
           f"reached {target_snr_db:g} dB [95% CI {100 * met['low']:.0f}-"
           f"{100 * met['high']:.0f}%], asked {100 * confidence:.0f}%")
  return [
      f"Stopping at P(SNR >= {target_snr_db:g} dB) >= {confidence:g} (test split, "
      "calibrated on the validation split):",
      f"  compute saved:       {saved:.0f}% (mean exit {point['mean_exit']:.2f} of "
      f"{num_exits}, {point['gmacs_per_second']:.2f} of {full['gmacs_per_second']:.2f} "
      "GMAC/s)",
      f"  SI-SNRi:             {point['si_snri']:.2f} dB (last exit {full['si_snri']:.2f} dB)",
      f"  target satisfaction: {share}",
  ]


def _grid(config):
  """The reports' grid: the config's (`config.evaluation`), with its stopping target
  and confidence (`config.inference`)."""
  return {"targets": sorted({*config.evaluation.targets_db, config.inference.target_snr_db}),
          "confidences": sorted({*config.evaluation.confidences,
                                 config.inference.confidence})}


def _evaluate(variables, model_config, source, out_dir, scales, config):
  table, summary = evaluate.evaluate_model(variables, model_config, source,
                                           posthoc_scales=scales, **_grid(config))
  return table, summary, evaluate.write_report(out_dir, table, summary)


def _check_sets(config):
  """`{name: root}` of the config's check sets (`config.data.check_sets` under
  `config.data.check_root`); none for a config without them."""
  names = config.data.get("check_sets") or ()
  return {name: str(pathlib.Path(config.data.check_root) / name) for name in names}


def main(workdir="runs/demo", config_path=DEMO_CONFIG, overrides=()):
  """Runs the demo end to end; returns the test split's evaluation summary."""
  start = time.monotonic()
  workdir = pathlib.Path(workdir)
  config = config_lib.load_config(config_path, overrides)
  target_snr_db, confidence = config.inference.target_snr_db, config.inference.confidence
  heldout_root = config.data.get("heldout_root")
  check_sets = _check_sets(config)

  print(f"[1/5] corpus: {config.data.root}, held-out voices: {heldout_root}, check sets: "
        f"{', '.join(check_sets.values()) or 'none'}")
  if config.data.synthesize_if_missing:
    data.ensure_demo_corpus(config.data.root, sample_rate=config.model.sample_rate,
                            num_sources=config.model.num_sources)
    data.ensure_heldout_corpus(heldout_root, sample_rate=config.model.sample_rate,
                               num_sources=config.model.num_sources)
    for name, root in check_sets.items():
      # The Kokoro sets' size is the config's; the recorded set's is its own.
      data.ensure_check_set(name, root, sample_rate=config.model.sample_rate,
                            num_mixtures=(None if name == "recorded"
                                          else config.data.check_mixtures))
  print(f"[2/5] training {config_path} for {config.steps} steps in {workdir}")
  train.train_and_evaluate(config, workdir)

  print("[3/5] fitting post-hoc calibration on the validation split")
  report, _ = calibration_report.calibrate_checkpoint(
      workdir, workdir / "calibration", config=config, target_snr_db=target_snr_db,
      **_grid(config))
  scales = calibration.load_posthoc(workdir)

  print("[4/5] evaluating every exit and stopping policy (test split, held-out voices)")
  model_config, variables = checkpoints.restore_params(workdir)
  test_source = data.open_split(config, config.data.test_split)
  table, summary, paths = _evaluate(variables, model_config, test_source,
                                    workdir / "evaluation", scales, config)
  heldout_config = config.copy_and_resolve_references()
  heldout_config.data.root, heldout_config.data.synthesize_if_missing = heldout_root, False
  heldout_table, heldout_summary, _ = _evaluate(
      variables, model_config, data.open_split(heldout_config, config.data.test_split),
      workdir / "evaluation_heldout", scales, config)
  check_summaries = {}
  for name, root in check_sets.items():
    check_config = config.copy_and_resolve_references()
    check_config.data.root, check_config.data.synthesize_if_missing = root, False
    _, check_summaries[name], _ = _evaluate(
        variables, model_config, data.open_split(check_config, config.data.test_split),
        workdir / f"evaluation_{name}", scales, config)

  print("[5/5] separating one test mixture")
  mixture_path = test_source.entry(0).mixture
  [result] = separate_files.separate_files(
      [mixture_path], variables=variables, config=model_config,
      out_dir=workdir / "separated", overwrite=True, target_snr_db=target_snr_db,
      confidence=confidence, posthoc_scales=scales)
  if result.error:
    raise RuntimeError(result.error)

  exits = "".join(f"  exit {k}" for k in range(1, model_config.num_exits + 1))
  gmacs = "".join(f"{row['gmacs_per_second']:8.2f}" for row in summary["per_exit"])
  test_name = f"test split ({summary['num_utterances']} utt.)"
  heldout_name = f"held-out voices ({heldout_summary['num_utterances']} utt.)"
  print("\n".join([
      "", f"{'SI-SNRi per exit (dB)':<30}{exits}",
      _per_exit_lines(test_name, summary), _per_exit_lines(heldout_name, heldout_summary),
      *(_per_exit_lines(f"{name} check ({check['num_utterances']} utt.)", check)
        for name, check in check_summaries.items()),
      f"  {'GMAC per second of audio':<28}{gmacs}",
      f"Utterances whose worst source reaches {target_snr_db:g} dB, per exit:",
      _reached_lines(test_name, table, target_snr_db),
      _reached_lines(heldout_name, heldout_table, target_snr_db),
      *_stopping_lines(summary, report, model_config.num_exits, target_snr_db, confidence),
      f"Separated {mixture_path} -> {', '.join(result.outputs)}",
      f"Reports: {paths['markdown']}, {workdir / 'calibration'}, "
      f"{workdir / 'evaluation_heldout'}",
      f"Demo finished in {(time.monotonic() - start) / 60:.1f} min."]))
  return summary
