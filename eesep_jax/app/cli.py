"""The `eesep` command line: one sub-command per job, each with an example in `--help`.

Errors are one line, `error: <path or flag>: <what is wrong>`, with exit code 2 for a
usage error and 1 for a data error (`eesep_jax.errors`); `--debug` or `EESEP_DEBUG=1`
adds the traceback.

argparse parses the commands and their flags; `eesep train`'s `--config.KEY=VALUE`
flags are left over for `ml_collections.config_flags` (`config_lib.parse_flags`),
which types them as the config's fields. Every default a flag shares with the library
is read from the config schema when it is needed (`_RunDefault`): building the parser,
and `eesep --help`, import no JAX.
"""

import argparse
import json
import math
import os
import sys
import textwrap
import warnings

from eesep_jax import errors

_SEPARATE_EXAMPLE = (
  "eesep separate meeting.wav mixtures/ --checkpoint runs/demo "
  "--out-dir separated --target-snr 12 --confidence 0.95"
)
_CALIBRATE_EXAMPLE = (
  "eesep calibrate --checkpoint runs/demo --out runs/demo/calibration "
  "--target-snr 12 --delta 0.05 --epsilon 0.1"
)


def _format(value):
  """A default as `--help` shows it: `15`, `5,10,15,20`."""
  if isinstance(value, str):
    return value
  return ",".join(f"{v:g}" for v in value) if isinstance(value, tuple) else f"{value:g}"


class _RunDefault:
  """A flag's default read from the run's saved config (`checkpoints.read_config`) when
  the command runs, e.g. `inference.target_snr_db`: what the run was configured to
  separate and report at. The schema's default (`config_lib.default`) is what a config
  holds that does not set the field; `--help` shows both."""

  def __init__(self, field):
    self.field = field

  def value(self, config):
    from eesep_jax import config_lib

    value = config_lib.get_field(config, self.field)
    return tuple(value) if isinstance(value, (list, tuple)) else value

  def __str__(self):
    from eesep_jax import config_lib

    return (
      f"the run's config.{self.field}; {_format(config_lib.default(self.field))} "
      "unless its config sets one"
    )


_TARGET_SNR = _RunDefault("inference.target_snr_db")
_CONFIDENCE = _RunDefault("inference.confidence")
_TARGETS = _RunDefault("evaluation.targets_db")
_CONFIDENCES = _RunDefault("evaluation.confidences")
_CHUNK_SECONDS = _RunDefault("inference.chunk_seconds")
_OVERLAP_SECONDS = _RunDefault("inference.overlap_seconds")
_CHUNK_BATCH = _RunDefault("inference.chunk_batch")
_DELTA = _RunDefault("evaluation.delta")
_EPSILON = _RunDefault("evaluation.epsilon")


class _Parser(argparse.ArgumentParser):
  """An `ArgumentParser` whose errors are one line, as every other `eesep` error."""

  def error(self, message):
    self.exit(
      errors.USAGE_EXIT_CODE,
      f"error: {message.removeprefix('argument ')} (see {self.prog} --help)\n",
    )


def _add_debug_flag(parser, default):
  parser.add_argument(
    "--debug",
    action="store_true",
    default=default,
    help=f"print the traceback of an error (or set {errors.DEBUG_VARIABLE}=1)",
  )


def _add_command(subparsers, name, handler, help_text, example):
  parser = subparsers.add_parser(
    name,
    help=help_text,
    description=help_text,
    epilog=f"example:\n  {example}",
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  parser.set_defaults(handler=handler)
  # SUPPRESS: `eesep --debug COMMAND` stays on when the command's own flag is absent.
  _add_debug_flag(parser, default=argparse.SUPPRESS)
  return parser


def info(args):
  """Prints a preset's size and compute per exit."""
  from eesep_jax import models  # Imported here so `eesep --help` does not load JAX.

  if args.preset not in models.PRESETS:
    raise errors.UsageError(
      f"--preset {args.preset}", f"no such preset; presets: {', '.join(models.PRESETS)}"
    )
  config = models.preset(args.preset)
  report = {
    "preset": args.preset,
    "params": models.count_params(config),
    "exits": config.num_exits,
    "gmacs_per_second_by_exit": [round(g, 3) for g in models.gmacs_by_exit(config)],
  }
  if args.json:
    print(json.dumps(report))
    return
  print(f"{report['preset']}: {report['params'] / 1e6:.2f} M parameters, {report['exits']} exits")
  for k, gmacs in enumerate(report["gmacs_per_second_by_exit"], start=1):
    print(f"  exit {k:2d}: {gmacs:7.2f} GMAC per second of {config.sample_rate // 1000} kHz audio")


def train_command(args):
  """Trains an experiment config; `--config.KEY=VALUE` flags override its fields."""
  from eesep_jax import config_lib
  from eesep_jax.training import throughput
  from eesep_jax.training import train

  profile_steps = throughput.parse_profile_steps(args.profile_steps) if args.profile_steps else None
  if args.distributed or args.coordinator:
    train.initialize_distributed(args.coordinator, args.num_processes, args.process_id)
  config, _ = config_lib.parse_flags(args.config, args.config_flags)
  try:
    train.train_and_evaluate(config, args.workdir, fresh=args.fresh, profile_steps=profile_steps)
  except errors.Preempted:
    # Training's own work, saving where it stopped, is done: a relaunch resumes there.
    return 0


def _numbers(text):
  """`"5,10,15"` -> `(5.0, 10.0, 15.0)`: the type of list-valued flags."""
  try:
    return tuple(float(item) for item in text.split(","))
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _number(text):
  """`float(text)`, NaN for what is no number: every range test then refuses it."""
  try:
    return float(text)
  except ValueError:
    return math.nan


def _unit_interval(text):
  """A probability strictly between 0 and 1 (`--delta`, `--epsilon`)."""
  value = _number(text)
  if not 0.0 < value < 1.0:
    raise argparse.ArgumentTypeError(f"{text!r} is not a number strictly between 0 and 1")
  return value


def _confidence(text):
  """A probability in (0, 1] (`--confidence`): 1 asks for certainty, 0 for nothing."""
  value = _number(text)
  if not 0.0 < value <= 1.0:
    raise argparse.ArgumentTypeError(f"{text!r} is not a probability in (0, 1]")
  return value


def _decibels(text):
  """A finite number of dB (`--target-snr`; give a negative one as `--target-snr=-5`)."""
  value = _number(text)
  if not math.isfinite(value):
    raise argparse.ArgumentTypeError(f"{text!r} is not a finite number of dB")
  return value


def _seconds(text):
  """A positive, finite number of seconds (`--chunk-seconds`, `--overlap-seconds`)."""
  value = _number(text)
  if not 0.0 < value < math.inf:
    raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
  return value


def _corpus_config(config, dataset, data_root, flag):
  """The training `config` reading another corpus: `dataset` (a kind) at `data_root`,
  each None for the training data's. Never with demo synthesis: reading data must not
  make a corpus.

  Raises:
    errors.UsageError: when the root given (`flag`) does not exist.
    errors.DataError: when the training data's root, from the saved config, is not
      there from this working directory.
  """
  import ml_collections

  config = ml_collections.ConfigDict(config.to_dict())
  if dataset not in (None, config.data.kind):
    config.data.options = ml_collections.ConfigDict()  # Those were the training kind's.
  config.data.update(
    kind=dataset or config.data.kind,
    root=data_root or config.data.root,
    synthesize_if_missing=False,
  )
  root = config.data.root
  if not os.path.exists(root):
    if data_root:
      raise errors.UsageError(f"{flag} {root}", "does not exist")
    raise errors.DataError(
      f"{root}: the training data's root does not exist here (the "
      f"working directory is {os.getcwd()}): pass {flag}"
    )
  return config


def _data_config(args, config):
  """The training `config` with `--dataset`/`--data-root` applied: the corpus to read."""
  return _corpus_config(config, args.dataset, args.data_root, "--data-root")


def _apply_run_defaults(args, config):
  """Sets every flag left at its `_RunDefault` to the run's value in `config`."""
  for name, value in vars(args).items():
    if isinstance(value, _RunDefault):
      setattr(args, name, value.value(config))


def _grid(args):
  """`--targets` and `--confidences`, as keywords, every value checked as `separate`
  checks `--target-snr` and `--confidence` (`_decibels`, `_confidence`), whether given
  or the run's defaults: call it before any work.

  Raises:
    errors.UsageError: naming the flag and the first value out of range.
  """
  for flag, values, check in (
    ("--targets", args.targets, _decibels),
    ("--confidences", args.confidences, _confidence),
  ):
    for value in values:
      try:
        check(f"{value:g}")
      except argparse.ArgumentTypeError as error:
        raise errors.UsageError(flag, str(error)) from None
  return {"targets": args.targets, "confidences": args.confidences}


def _posthoc_scales(args, run):
  """The post-hoc scales `eesep calibrate` saved in the `run` (`runs.TrainedRun`),
  announced on stderr; None with `--no-posthoc` or when there are none."""
  scales = None if args.no_posthoc else run.posthoc_scales
  if scales is not None and not getattr(args, "quiet", False):
    print(
      f"applying post-hoc calibration from {run.posthoc_path} (--no-posthoc to ignore it)",
      file=sys.stderr,
    )
  return scales


def evaluate_command(args):
  """Evaluates a checkpoint on full-length utterances (see `eesep_jax.analysis.evaluate`)."""
  from eesep_jax import data
  from eesep_jax import runs
  from eesep_jax.analysis import evaluate
  from eesep_jax.app import separate_files

  run = runs.load(args.checkpoint, step=args.step)
  config = _data_config(args, run.config)
  _apply_run_defaults(args, config)
  grid = _grid(args)
  scales = _posthoc_scales(args, run)
  source = data.open_split(config, args.split or config.data.test_split)
  with separate_files.report_dir(args.out):
    table, summary = evaluate.evaluate_model(
      run.variables,
      run.model_config,
      source,
      max_utterances=args.max_utterances,
      enhancement_metrics=args.enhancement_metrics,
      target_snr_db=args.target_snr,
      confidence=args.confidence,
      posthoc_scales=scales,
      **grid,
    )
    summary = {
      "checkpoint": str(args.checkpoint),
      "step": run.checkpoint_step,
      "dataset": repr(source),
      "posthoc_scales": None
      if scales is None
      else {name: value.tolist() for name, value in scales.items()},
      **summary,
    }
    paths = evaluate.write_report(args.out, table, summary)
  print(paths["markdown"].read_text())
  print("wrote " + ", ".join(str(path) for path in paths.values()))


def demo(args):
  """Runs the quickstart job (see `eesep_jax.app.demo`)."""
  from eesep_jax.app import demo as demo_job

  demo_job.main(workdir=args.workdir)


def _positive_int(text):
  if not text.isdigit() or int(text) < 1:
    raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
  return int(text)


def _exit_index(text):
  """`--exit-index`: a 1-based exit, or "last"."""
  return text if text == "last" else _positive_int(text)


def _describe(result, target_snr_db, num_exits):
  """One line: where a separated file stopped, how sure it was, and what it cost."""
  if result.note:
    return f"{result.path}: {result.note} -> {', '.join(result.outputs)}"
  exits = result.exits
  chunks = exits.exit_index.size
  exit_note, probability_note = (
    (f" (mean of {chunks} chunks)", " (lowest chunk)") if chunks > 1 else ("", "")
  )
  # Rounded to an int, so that sums differing in their last bit do not print "-0%".
  saved = round(100 * (1.0 - exits.total_gmacs / exits.full_depth_gmacs))
  line = (
    f"{result.path}: exit {round(exits.mean_exit, 1):g} of {num_exits}{exit_note}, "
    f"P(SNR >= {target_snr_db:g} dB) = {exits.min_probability:.2f}{probability_note}, "
    f"{exits.total_gmacs:.3g} of {exits.full_depth_gmacs:.3g} GMAC, {saved}% of the "
    "FLOPs saved"
  )
  if exits.total_executed_gmacs > exits.total_gmacs * (1 + 1e-6):
    executed = round(100 * (1.0 - exits.total_executed_gmacs / exits.full_depth_gmacs))
    line += (
      f" (its batches of chunks ran {exits.total_executed_gmacs:.3g} GMAC, "
      f"{executed}% saved: a batch runs until its last chunk stops)"
    )
  if result.gain < 1.0:
    line += f", scaled by {20 * math.log10(result.gain):.1f} dB so as not to clip"
  return f"{line} -> {', '.join(result.outputs)}"


def _chunking(args, config):
  """`separate_long`'s chunking keywords, from the flags (`calibrate` has no
  `--chunk-batch`), checked at `config`'s sample rate."""
  from eesep_jax import inference

  chunking = {name: getattr(args, name) for name in ("chunk_seconds", "overlap_seconds")}
  if hasattr(args, "chunk_batch"):
    chunking["chunk_batch"] = args.chunk_batch
  try:
    inference.chunk_lengths(config, chunking["chunk_seconds"], chunking["overlap_seconds"])
    inference.check_chunk_memory(
      config, chunking["chunk_seconds"], chunking.get("chunk_batch", inference.CHUNK_BATCH)
    )
  except inference.ChunkingError as error:
    flag = "--" + error.field.replace("_", "-")
    raise errors.UsageError(f"{flag} {chunking[error.field]:g}", error.problem) from None
  return chunking


def _warn_of_another_regime(run, chunking):
  """One line on stderr when `separate` chunks otherwise than the chunks the `run`'s
  post-hoc scales were fitted (and their threshold certified) on: then neither holds
  for it."""
  running = (chunking["chunk_seconds"], chunking["overlap_seconds"])
  if run.posthoc_fits(*running):
    return
  regime = run.posthoc_regime
  fitted = (
    "whole utterances"
    if regime is None
    else f"chunks of {regime['chunk_seconds']:g} s overlapping {regime['overlap_seconds']:g} s"
  )
  print(
    f"warning: the post-hoc scales were fitted on {fitted}, but separate runs on chunks "
    f"of {running[0]:g} s overlapping {running[1]:g} s, where their calibration is not "
    f"measured (eesep calibrate --chunk-seconds {running[0]:g} --overlap-seconds "
    f"{running[1]:g} measures it)",
    file=sys.stderr,
  )


def separate_command(args):
  """Separates audio files with a trained model; exit code 1 if any file failed."""
  import tqdm

  from eesep_jax import runs
  from eesep_jax.app import separate_files

  if args.exit_index is not None and args.policy not in (None, "fixed"):
    raise errors.UsageError(
      f"--exit-index {args.exit_index}",
      f"fixes the depth: it cannot go with --policy {args.policy}",
    )
  if args.policy == "fixed" and args.exit_index is None:
    raise errors.UsageError("--policy fixed", "needs --exit-index")
  run = runs.load(args.checkpoint)
  config = run.model_config
  _apply_run_defaults(args, run.config)
  exit_index = config.num_exits if args.exit_index == "last" else args.exit_index
  if exit_index is not None and exit_index > config.num_exits:
    raise errors.UsageError(f"--exit-index {exit_index}", f"the model has {config.num_exits} exits")
  chunking = _chunking(args, config)

  def report(result):
    if result.error:
      tqdm.tqdm.write(f"error: {result.error}", file=sys.stderr)
    elif not args.quiet:
      tqdm.tqdm.write(_describe(result, args.target_snr, config.num_exits))

  scales = _posthoc_scales(args, run)
  if scales is not None:
    _warn_of_another_regime(run, chunking)
  results = separate_files.separate_files(
    args.inputs,
    variables=run.variables,
    config=config,
    out_dir=args.out_dir,
    report=report,
    progress=not args.quiet,
    overwrite=args.overwrite,
    policy="fixed" if exit_index else (args.policy or "probabilistic"),
    target_snr_db=args.target_snr,
    confidence=args.confidence,
    exit_index=exit_index,
    posthoc_scales=scales,
    **chunking,
  )
  return int(any(result.error for result in results))


def calibrate_command(args):
  """Fits post-hoc calibration and a guaranteed threshold, and reports calibration
  before and after (see `eesep_jax.analysis.calibration_report`)."""
  from eesep_jax import runs
  from eesep_jax.analysis import calibration_report
  from eesep_jax.app import separate_files

  if args.max_utterances is not None and (
    args.max_utterances < calibration_report.MIN_FIT_UTTERANCES
  ):
    raise errors.UsageError(
      f"--max-utterances {args.max_utterances}", calibration_report.TOO_FEW_TO_FIT
    )
  config = _data_config(args, runs.load(args.checkpoint).config)
  _apply_run_defaults(args, config)
  if args.fit_alpha and args.method != "nll":
    raise errors.UsageError("--fit-alpha", "needs --method nll")
  grid = _grid(args)
  # The fit corpus: the test corpus, unless --fit-dataset/--fit-data-root say otherwise.
  fit_config = config
  if args.fit_dataset or args.fit_data_root:
    fit_config = _corpus_config(config, args.fit_dataset, args.fit_data_root, "--fit-data-root")
  fit_split = args.fit_split or config.data.valid_split
  split = args.split or config.data.test_split
  if (fit_split, fit_config.data.kind, fit_config.data.root) == (
    split,
    config.data.kind,
    config.data.root,
  ):
    print(
      f"warning: fitting and testing on the same split {split!r}: the test measures "
      "after post-hoc calibration are optimistic",
      file=sys.stderr,
    )
  # The chunks `separate` would cut (its defaults unless given), checked at the
  # model's rate.
  chunking = _chunking(args, config.model)
  with separate_files.report_dir(args.out):
    report, paths = calibration_report.calibrate_checkpoint(
      args.checkpoint,
      args.out,
      config=config,
      fit_config=fit_config,
      fit_split=fit_split,
      split=split,
      method=args.method,
      fit_alpha=args.fit_alpha,
      target_snr_db=args.target_snr,
      delta=args.delta,
      epsilon=args.epsilon,
      max_utterances=args.max_utterances,
      chunk_seconds=chunking["chunk_seconds"],
      overlap_seconds=chunking["overlap_seconds"],
      **grid,
    )
  print(calibration_report.text_summary(report))
  print(
    f"saved post-hoc scales to {report['posthoc']['path']}: `eesep evaluate` and "
    "`eesep separate` apply them from now on (--no-posthoc to ignore them); they are "
    f"calibrated for `separate --chunk-seconds {chunking['chunk_seconds']:g} "
    f"--overlap-seconds {chunking['overlap_seconds']:g}`"
  )
  print("wrote " + ", ".join(str(path) for path in paths.values()))


def _add_corpus_flags(parser):
  """`--checkpoint` and what to evaluate it on: the flags `evaluate` and `calibrate` share."""
  parser.add_argument("--checkpoint", required=True, help="a training workdir")
  parser.add_argument(
    "--dataset", help="an open_dataset kind, e.g. wsj0-mix (default: the training data's)"
  )
  parser.add_argument("--data-root", help="the dataset's folder (default: the training data's)")
  parser.add_argument("--split", help="default: the training config's test split")
  parser.add_argument(
    "--max-utterances",
    type=_positive_int,
    help="evaluate this many of a split, evenly spread (default: all)",
  )
  parser.add_argument(
    "--targets", type=_numbers, default=_TARGETS, help="target SNRs in dB (default: %(default)s)"
  )
  parser.add_argument(
    "--confidences",
    type=_numbers,
    default=_CONFIDENCES,
    help="confidence levels (default: %(default)s)",
  )


def _add_posthoc_flag(parser):
  parser.add_argument(
    "--no-posthoc",
    action="store_true",
    help="ignore the post-hoc calibration `eesep calibrate` saved in the checkpoint",
  )


def _add_chunking_flags(parser, chunk_help, overlap_help):
  """`--chunk-seconds` and `--overlap-seconds`, as `separate` and `calibrate` take them."""
  parser.add_argument("--chunk-seconds", type=_seconds, default=_CHUNK_SECONDS, help=chunk_help)
  parser.add_argument(
    "--overlap-seconds", type=_seconds, default=_OVERLAP_SECONDS, help=overlap_help
  )


def build_parser():
  parser = _Parser(
    prog="eesep",
    description=textwrap.dedent("""\
          eesep_jax: speech separation networks that know when to quit.
          Run `eesep COMMAND --help` for each command's options and an example."""),
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  _add_debug_flag(parser, default=False)
  subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

  parser_info = _add_command(
    subparsers,
    "info",
    info,
    "Print a preset's parameter count and GMAC/s per exit.",
    "eesep info --preset press-4 --json",
  )
  parser_info.add_argument("--preset", required=True, help="tiny, press-4 or press-12")
  parser_info.add_argument("--json", action="store_true", help="print one JSON object")

  parser_demo = _add_command(
    subparsers,
    "demo",
    demo,
    "Run the quickstart job end to end (what `make demo` runs), from any directory: "
    "train the config that ships in the package, eesep_jax/configs/demo.py (`eesep "
    "train --config demo` alone), then calibrate, evaluate and separate.",
    "eesep demo --workdir runs/demo",
  )
  parser_demo.add_argument("--workdir", default="runs/demo", help="where outputs go")

  parser_train = _add_command(
    subparsers,
    "train",
    train_command,
    "Train (or resume) an experiment; dotted --config.KEY=VALUE flags override the "
    "config's fields, each typed as its field (--config.model.width=48, "
    "--config.data.dynamic_mixing=False, --config.evaluation.targets_db=5,10).",
    "eesep train --config demo --workdir runs/demo --config.steps=200",
  )
  parser_train.add_argument(
    "--config",
    required=True,
    help="an experiment config file (e.g. experiments/configs/wsj0_2mix_press4.py), or "
    "the name of one that ships in the package: demo (eesep_jax/configs/demo.py, "
    "what `eesep demo` trains)",
  )
  parser_train.add_argument(
    "--workdir", required=True, help="checkpoints, config and logs (local path or gs://)"
  )
  parser_train.add_argument(
    "--fresh",
    action="store_true",
    help="start the run in --workdir over, removing its checkpoints and logs (a run "
    "whose checkpoints are gone is refused without it)",
  )
  parser_train.add_argument(
    "--distributed",
    action="store_true",
    help="join a multi-host job, discovering it (Cloud TPU pods)",
  )
  parser_train.add_argument("--coordinator", help="host:port of process 0 (multi-process)")
  parser_train.add_argument("--num-processes", type=int, help="processes in the job")
  parser_train.add_argument("--process-id", type=int, help="this process's index")
  parser_train.add_argument(
    "--profile-steps",
    metavar="A:B",
    help="write a jax.profiler trace of steps A to B to "
    "WORKDIR/profile (TensorBoard's profile plugin reads it)",
  )

  parser_separate = _add_command(
    subparsers,
    "separate",
    separate_command,
    "Separate audio files with a trained model into OUT/<stem>_s1.wav, _s2.wav, ...; "
    "print each file's exit, its probability and the compute it spent.",
    _SEPARATE_EXAMPLE,
  )
  parser_separate.add_argument(
    "inputs", nargs="+", metavar="INPUT", help="audio files, or folders of them"
  )
  parser_separate.add_argument(
    "--checkpoint", required=True, help="a training workdir, e.g. runs/demo"
  )
  parser_separate.add_argument("--out-dir", required=True, help="where the outputs go")
  parser_separate.add_argument(
    "--overwrite",
    action="store_true",
    help="replace existing files at the outputs' names (never one of the inputs); "
    "without it, a file separated by an earlier run into OUT is kept",
  )
  parser_separate.add_argument(
    "--target-snr",
    type=_decibels,
    default=_TARGET_SNR,
    help="the target SNR in dB an exit must reach (default: %(default)s); with "
    "--exit-index, the target of the reported probability",
  )
  depth = parser_separate.add_mutually_exclusive_group()
  depth.add_argument(
    "--confidence",
    type=_confidence,
    default=_CONFIDENCE,
    help="the probability P(SNR >= target) the probabilistic policy "
    "requires (default: %(default)s)",
  )
  depth.add_argument(
    "--exit-index",
    type=_exit_index,
    metavar="N|last",
    help="stop every chunk at this 1-based exit instead",
  )
  parser_separate.add_argument(
    "--policy",
    choices=("probabilistic", "expected-snr", "fixed"),
    help="when to stop (default: fixed with --exit-index, else probabilistic)",
  )
  _add_chunking_flags(
    parser_separate,
    "long files are separated in chunks this long (default: %(default)s)",
    "consecutive chunks overlap and cross-fade this long; at most half a chunk "
    "(default: %(default)s)",
  )
  parser_separate.add_argument(
    "--chunk-batch",
    type=_positive_int,
    default=_CHUNK_BATCH,
    help="chunks separated at once: more is faster on an accelerator and needs more "
    "memory (default: %(default)s)",
  )
  parser_separate.add_argument(
    "--quiet", action="store_true", help="print errors only: no progress bar, no per-file line"
  )
  _add_posthoc_flag(parser_separate)

  parser_evaluate = _add_command(
    subparsers,
    "evaluate",
    evaluate_command,
    "Evaluate a checkpoint on full-length utterances: metrics at every exit, and every "
    "stopping policy over a grid of targets and confidences.",
    "eesep evaluate --checkpoint runs/demo --out runs/demo/evaluation --max-utterances 50",
  )
  _add_corpus_flags(parser_evaluate)
  parser_evaluate.add_argument(
    "--step",
    type=int,
    help="evaluate the checkpoint of this training step (default: the best by validation, "
    "else the latest)",
  )
  parser_evaluate.add_argument(
    "--out",
    required=True,
    help="folder for evaluation.json, exit_table.npz, per_utterance.csv and evaluation.md",
  )
  parser_evaluate.add_argument(
    "--target-snr",
    type=_decibels,
    default=_TARGET_SNR,
    help="the target in dB the report heads with, added to --targets and to every "
    "whole dB where the exits differ (default: %(default)s)",
  )
  parser_evaluate.add_argument(
    "--confidence",
    type=_confidence,
    default=_CONFIDENCE,
    help="the confidence the report heads with, added to --confidences (default: %(default)s)",
  )
  parser_evaluate.add_argument(
    "--enhancement-metrics",
    action=argparse.BooleanOptionalAction,
    help="also PESQ and STOI, seconds per utterance (default: for one-source models only)",
  )
  _add_posthoc_flag(parser_evaluate)

  parser_calibrate = _add_command(
    subparsers,
    "calibrate",
    calibrate_command,
    "Measure how well a checkpoint's exit probabilities are calibrated (reliability, "
    "PIT, CRPS, target satisfaction), fit per-exit post-hoc scales on the validation "
    "split (saved in the checkpoint folder for `evaluate` and `separate`), and certify "
    "an exit threshold: with probability >= 1 - epsilon, at most a share delta of "
    "utterances fall short of the target.",
    _CALIBRATE_EXAMPLE,
  )
  _add_corpus_flags(parser_calibrate)
  parser_calibrate.add_argument(
    "--out",
    required=True,
    help="folder for calibration.json, exit_table.npz, per_utterance.csv and the figures (*.png)",
  )
  parser_calibrate.add_argument(
    "--fit-split",
    help="where the scales are fitted and the threshold certified, on "
    "disjoint halves (default: the training config's validation split)",
  )
  parser_calibrate.add_argument(
    "--fit-dataset",
    help="the fit split's dataset kind, when not the test's (e.g. fit on "
    "in-domain validation data, test on a shifted corpus)",
  )
  parser_calibrate.add_argument(
    "--fit-data-root", help="the fit split's dataset folder (default: the test's)"
  )
  parser_calibrate.add_argument(
    "--method",
    choices=("nll", "moments", "brier"),  # probabilistic.POSTHOC_METHODS, without JAX.
    default=_RunDefault("evaluation.calibration_method"),
    help="fit the scales by likelihood, match the mean error variance, or fit them and a "
    "cross-talk slope to the decision P(SNR >= target) at the report's targets "
    "(default: %(default)s)",
  )
  parser_calibrate.add_argument(
    "--fit-alpha",
    action="store_true",
    help="also scale alpha - 1, the tails' weight (Student-t heads, --method nll)",
  )
  parser_calibrate.add_argument(
    "--target-snr",
    type=_decibels,
    default=_TARGET_SNR,
    help="the target SNR in dB of the certified threshold (default: %(default)s)",
  )
  parser_calibrate.add_argument(
    "--delta",
    type=_unit_interval,
    default=_DELTA,
    help="the share of utterances allowed to miss the target (default: %(default)s)",
  )
  parser_calibrate.add_argument(
    "--epsilon",
    type=_unit_interval,
    default=_EPSILON,
    help="the probability that the certificate is wrong (default: %(default)s)",
  )
  _add_chunking_flags(
    parser_calibrate,
    "fit and certify in the chunks `eesep separate --chunk-seconds` cuts, the "
    "regime it runs in (default, as separate's: %(default)s)",
    "the chunks' overlap, as in `eesep separate` (default, as separate's: %(default)s)",
  )

  from eesep_jax.data import cli as data_cli

  data_cli.add_data_commands(subparsers)
  return parser


def _show_warning(message, *unused_args, **unused_kwargs):
  """Warnings as `warning: <message>` lines (a downmixed file, skipped examples),
  written between a progress bar's redraws."""
  import tqdm

  tqdm.tqdm.write(f"warning: {message}", file=sys.stderr)


def _config_flags(parser, extras):
  """The `--config.KEY[=VALUE]` flags (`config_lib.is_override`), and the values given
  after them, among the arguments argparse left over; a one-line argparse error for
  any other."""
  if not extras:
    return []
  from eesep_jax import config_lib

  after_flag = False
  for index, arg in enumerate(extras):
    flag = config_lib.is_override(arg)
    if not (flag or after_flag):
      parser.error(f"unrecognized arguments: {' '.join(extras[index:])}")
    after_flag = flag and "=" not in arg
  return extras


def parse_args(argv=None):
  """`eesep ARGV` parsed: argparse's namespace (a `_RunDefault` stays until the command
  reads the run: `_apply_run_defaults`), and `config_flags`, the `--config.KEY=VALUE`
  flags `eesep train` passes to `config_lib.parse_flags`.

  Raises:
    SystemExit: with code 2 for a usage error argparse finds, after its one line.
    errors.UsageError: for `--config.KEY=VALUE` flags given to another command.
  """
  parser = build_parser()
  args, extras = parser.parse_known_args(
    sys.argv[1:] if argv is None else [str(arg) for arg in argv]
  )
  args.config_flags = _config_flags(parser, extras)
  if args.config_flags and args.command != "train":
    raise errors.UsageError(args.config_flags[0], "overrides only apply to `train`")
  return args


def main(argv=None):
  """Runs `eesep ARGV`; returns the command's exit code (1 when a file failed).

  Raises:
    SystemExit: with code 2 for a usage error, 1 for a data error, after its one line
      on stderr (`errors.report`); 130 on Ctrl-C, after one line too (what each
      command was writing is removed, or left whole, by the command); 143 when a
      preemption stopped the training a command goes on from (`errors.Preempted`).
  """
  args = None
  try:
    args = parse_args(argv)
    with warnings.catch_warnings():
      warnings.showwarning = _show_warning
      return args.handler(args)
  except errors.REPORTED as error:
    # `--debug` is parsed only once the flags are: before that, only the variable counts.
    raise SystemExit(errors.report(error, getattr(args, "debug", False))) from None
  except errors.Preempted as preempted:
    raise SystemExit(errors.report_preempted(preempted)) from None
  except KeyboardInterrupt as interrupt:
    # An object the interrupt caught half-built (a grain iterator) fails in `__del__` as
    # the interpreter exits, after the one line: nothing the user can act on.
    sys.unraisablehook = lambda unraisable: None
    raise SystemExit(errors.report_interrupt(interrupt, getattr(args, "debug", False))) from None


if __name__ == "__main__":
  sys.exit(main())
