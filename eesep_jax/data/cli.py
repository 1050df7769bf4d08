"""`eesep data ...`: the data commands, registered on the main `eesep` parser."""

import argparse
import json
import time

from eesep_jax import errors

_SYNTH_EXAMPLE = (
  "eesep data synth --out data/synth-2mix --sample-rate 8000 --num-sources 2 "
  "--num-train 400 --num-valid 50 --num-test 50 --noise none --seed 0"
)


def _english():
  from eesep_jax.data import espeak  # pylint: disable=g-import-not-at-top

  return espeak.ENGLISH_VOICES


def _heldout():
  from eesep_jax.data import espeak  # pylint: disable=g-import-not-at-top

  return espeak.HELDOUT_VOICES


# `--accents`: where speakers' accents come from.
_ACCENTS = {"english": _english, "heldout": _heldout}


def _count(text, least=0):
  """An integer of at least `least` (`--num-train`: 0 or more)."""
  try:
    value = int(text)
  except ValueError:
    value = least - 1
  if value < least:
    raise argparse.ArgumentTypeError(f"{text!r} is not an integer of at least {least}")
  return value


def _workers(text):
  return _count(text, least=1)


def synth_command(args):
  """Synthesises the embedded eSpeak corpus and prints its manifest summary."""
  from eesep_jax.data import synth  # pylint: disable=g-import-not-at-top

  if not args.num_train + args.num_valid + args.num_test:
    raise errors.UsageError(
      "--num-train, --num-valid, --num-test", "all zero: nothing to synthesise"
    )
  start = time.perf_counter()
  manifest = synth.synthesize_corpus(
    args.out,
    sample_rate=args.sample_rate,
    num_sources=args.num_sources,
    num_train=args.num_train,
    num_valid=args.num_valid,
    num_test=args.num_test,
    noise=None if args.noise == "none" else args.noise,
    seed=args.seed,
    accents=_ACCENTS[args.accents](),
    piper_speakers=args.piper_speakers,
    kokoro_speakers=args.kokoro_speakers,
    num_workers=args.num_workers,
    progress=not args.quiet,
  )
  summary = {
    split: {key: info[key] for key in ("mixtures", "seconds")}
    for split, info in manifest["splits"].items()
  }
  print(
    json.dumps(
      {
        "out": args.out,
        "layout": manifest["layout"],
        "splits": summary,
        "wall_seconds": round(time.perf_counter() - start, 1),
      }
    )
  )


def check_command(args):
  """Makes a check set (`data.checksets`) and prints its manifest summary."""
  from eesep_jax.data import checksets  # pylint: disable=g-import-not-at-top

  start = time.perf_counter()
  manifest = checksets.ensure_check_set(
    args.name,
    args.out,
    sample_rate=args.sample_rate,
    num_mixtures=args.num_mixtures,
    progress=not args.quiet,
  )
  print(
    json.dumps(
      {
        "out": args.out,
        "check_set": args.name,
        "purpose": manifest["purpose"],
        "mixtures": manifest["splits"]["tt"]["mixtures"],
        "seconds": manifest["splits"]["tt"]["seconds"],
        "wall_seconds": round(time.perf_counter() - start, 1),
      }
    )
  )


def _add_sample_rate(parser, rates):
  parser.add_argument(
    "--sample-rate", type=int, choices=rates, default=8000, help="sample rate in Hz (default: 8000)"
  )


def add_data_commands(subparsers):
  """Adds `data` (sub-commands `synth`, `check`) to the `eesep` sub-command parsers."""
  # Light: numpy, soundfile; no JAX.
  from eesep_jax.data import checksets  # pylint: disable=g-import-not-at-top
  from eesep_jax.data import synth  # pylint: disable=g-import-not-at-top

  data_parser = subparsers.add_parser(
    "data",
    help="Dataset tools: synthesise the embedded speech corpus.",
    description="Dataset tools. Run `eesep data COMMAND --help` for each command.",
  )
  commands = data_parser.add_subparsers(dest="data_command", required=True, metavar="COMMAND")
  parser = commands.add_parser(
    "synth",
    help="Synthesise a speech separation corpus with eSpeak NG (offline).",
    description=(
      "Synthesise a speech separation corpus from eSpeak NG voices, offline and\n"
      "deterministic from --seed. Clean corpora are written in the wsj0-mix layout\n"
      "(tr/cv/tt with mix, s1..sC), noisy ones in the WHAM! layout (mix_clean,\n"
      "mix_both, mix_single, s1..sC, noise); both get LibriMix metadata CSVs."
    ),
    epilog=f"example:\n  {_SYNTH_EXAMPLE}",
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  parser.set_defaults(handler=synth_command)
  parser.add_argument("--out", required=True, help="output folder (new or empty)")
  _add_sample_rate(parser, synth.SAMPLE_RATES)
  parser.add_argument(
    "--num-sources", type=int, choices=(2, 3), default=2, help="speakers per mixture (default: 2)"
  )
  defaults = synth.DEMO_SIZES
  for split, what in (("train", "training"), ("valid", "validation"), ("test", "test")):
    default = defaults[f"num_{split}"]
    parser.add_argument(
      f"--num-{split}", type=_count, default=default, help=f"{what} mixtures (default: {default})"
    )
  parser.add_argument(
    "--noise",
    choices=("none", *synth.NOISES),
    default="none",
    help="background noise for noisy separation and enhancement (default: none)",
  )
  parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
  parser.add_argument(
    "--accents",
    choices=sorted(_ACCENTS),
    default="english",
    help="speakers' accents: English eSpeak voices, or other languages' "
    "voices that no English corpus trains on (default: english)",
  )
  parser.add_argument(
    "--piper-speakers",
    type=_count,
    default=0,
    help="training speakers who are Piper voices, beside the eSpeak "
    "ones (default: 0; the demo corpus has "
    f"{synth.DEMO_PIPER_SPEAKERS})",
  )
  parser.add_argument(
    "--kokoro-speakers",
    type=_count,
    default=0,
    help="training speakers who are Kokoro voices (blends of its five), "
    "beside the eSpeak ones; check such a corpus on `eesep data check piper` "
    "(default: 0)",
  )
  parser.add_argument(
    "--num-workers",
    type=_workers,
    default=None,
    help="synthesis processes (default: CPU count, at most 8)",
  )
  parser.add_argument("--quiet", action="store_true", help="no progress bar")

  check = commands.add_parser(
    "check",
    help="Make a check set of speech a corpus has not heard (offline).",
    description=(
      "Make a check set: two-speaker mixtures, in the wsj0-mix layout (tt only), of\n"
      "speech a corpus has not heard. kokoro: the unseen-engine check of the demo\n"
      "corpus (Kokoro-82M); kokoro-blend: the final-report set (blends of its\n"
      "voices); piper: the unseen-engine check of a corpus made with\n"
      "--kokoro-speakers (Piper's voice); recorded: a recorded voice (CMU ARCTIC,\n"
      "shipped in pysptk)."
    ),
    epilog="example:\n  eesep data check kokoro --out data/checks/kokoro",
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  check.set_defaults(handler=check_command)
  check.add_argument("name", choices=tuple(checksets.CHECK_SETS), help="which check set")
  check.add_argument("--out", required=True, help="output folder (new, or the same set)")
  _add_sample_rate(check, synth.SAMPLE_RATES)
  check.add_argument(
    "--num-mixtures", type=int, default=None, help="mixtures (default: the set's own, 300 or 24)"
  )
  check.add_argument("--quiet", action="store_true", help="no progress bar")
  return data_parser
