"""The quickstart job behind `make demo`: corpus, training, evaluation, separation.

    eesep demo --workdir runs/demo

1. builds the embedded eSpeak corpus under `data/demo` if it is missing;
2. trains `experiments/configs/demo.py` (the `tiny` preset) in `WORKDIR`, resuming if
   a run is already there;
3. evaluates every exit and every stopping policy on the test split
   (`WORKDIR/evaluation/`);
4. separates one test mixture into `WORKDIR/separated/`;
5. prints SI-SNRi per exit and, at the default target, the mean exit and the
   compute saved.
"""

import pathlib
import time

from eesep_jax import config_lib
from eesep_jax import data
from eesep_jax import errors
from eesep_jax import evaluate
from eesep_jax import separate_files
from eesep_jax import train

DEMO_CONFIG = pathlib.Path("experiments/configs/demo.py")
# The stopping target the summary reports: 10 dB with 90% confidence.
TARGET_SNR_DB = 10.0
CONFIDENCE = 0.9
# Test utterances the demo evaluates: each distinct length compiles once (see
# `evaluate`), so all 50 would add minutes for little.
TEST_UTTERANCES = 30


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
  """The config a run saved (`train.read_config`), a relative `data.root` found as
  `locate` finds it: the demo trains from the repository root with `data/demo`."""
  config = train.read_config(workdir)
  config.data.root = str(locate(config.data.root) or config.data.root)
  return config


def _summary(summary, num_exits):
  """Lines of the final report: SI-SNRi per exit and the default target's savings."""
  per_exit = summary["per_exit"]
  lines = ["SI-SNRi per exit (test split, full-length utterances):"]
  lines += [f"  exit {k}: {row['si_snri']:6.2f} dB  ({row['gmacs_per_second']:.2f} GMAC/s)"
            for k, row in enumerate(per_exit, start=1)]
  point = next(p for p in summary["policies"]
               if p["policy"] == "probabilistic" and p["target_snr_db"] == TARGET_SNR_DB
               and p["confidence"] == CONFIDENCE)
  full = per_exit[-1]["gmacs_per_second"]
  # `max` with 0.0 first: when nothing is saved, `1 - x / x` is -0.0, printed "-0%".
  saved = max(0.0, 100 * (1 - point["gmacs_per_second"] / full))
  lines.append(
      f"Stopping at P(SNR >= {TARGET_SNR_DB:g} dB) >= {CONFIDENCE:g}: mean exit "
      f"{point['mean_exit']:.2f} of {num_exits}, {point['gmacs_per_second']:.2f} of "
      f"{full:.2f} GMAC/s ({saved:.0f}% saved), "
      f"SI-SNRi {point['si_snri']:.2f} dB, {100 * point['reached_target']:.0f}% of "
      f"utterances reached {TARGET_SNR_DB:g} dB")
  return lines


def main(workdir="runs/demo", config_path=DEMO_CONFIG, overrides=()):
  """Runs the demo end to end; returns the evaluation summary."""
  start = time.monotonic()
  workdir = pathlib.Path(workdir)
  if not pathlib.Path(config_path).is_file():
    raise errors.UsageError(config_path, "not found: run the demo from the repository root")
  config = config_lib.load_config(config_path, overrides)

  print(f"[1/4] corpus: {config.data.root}")
  if config.data.synthesize_if_missing:
    data.ensure_demo_corpus(config.data.root, sample_rate=config.model.sample_rate,
                            num_sources=config.model.num_sources)
  print(f"[2/4] training {config_path} for {config.steps} steps in {workdir}")
  train.train_and_evaluate(config, workdir)

  print("[3/4] evaluating every exit and stopping policy on the test split")
  model_config, variables = train.restore_params(workdir)
  test_source = data.open_split(config, config.data.test_split)
  rows, summary = evaluate.evaluate_model(
      variables, model_config, test_source, max_utterances=TEST_UTTERANCES)
  paths = evaluate.write_report(workdir / "evaluation", rows, summary)

  print("[4/4] separating one test mixture")
  mixture_path = test_source.entry(0).mixture
  [result] = separate_files.separate_files(
      [mixture_path], variables=variables, config=model_config,
      out_dir=workdir / "separated", overwrite=True, target_snr_db=TARGET_SNR_DB,
      confidence=CONFIDENCE)
  if result.error:
    raise RuntimeError(result.error)

  print("\n".join(["", *_summary(summary, model_config.num_exits),
                   f"Separated {mixture_path} -> {', '.join(result.outputs)}",
                   f"Reports: {paths['markdown']}, {paths['csv']}",
                   f"Demo finished in {(time.monotonic() - start) / 60:.1f} min."]))
  return summary
