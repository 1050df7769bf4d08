#!/usr/bin/env python3
"""Compares the variance parameterisations, single-exit baselines and per-exit permutation.

The command line of `driver.py`: trains every variant of
`eesep_jax.analysis.ablation.variants` on the same data, seed and budget, evaluates and
calibrates each (what `eesep calibrate` does), and writes one comparison table
(`OUT/comparison.md`, `.csv`, `.json`) and figures. Re-running the same command resumes:
finished variants are loaded, finished trainings skipped.

    python experiments/ablations/variance_parameterisations.py --smoke --out runs/ablation-smoke
    python experiments/ablations/variance_parameterisations.py --out runs/ablation  # a TPU host
"""

import argparse
import pathlib
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[2]
FULL_CONFIG = REPO / "experiments" / "configs" / "ablation_full.py"
SMOKE_CONFIG = REPO / "eesep_jax" / "configs" / "demo.py"
EXAMPLE = f"""examples:
  python {pathlib.Path(__file__).relative_to(REPO)} --smoke --out runs/ablation-smoke
  python {pathlib.Path(__file__).relative_to(REPO)} --out runs/ablation \\
      --override data.root=/data/wsj0-mix/2speakers/wav8k/min --max-utterances 500
  python {pathlib.Path(__file__).relative_to(REPO)} --smoke --out runs/ablation-smoke \\
      --variants student-snr,single-exit-1 --steps 10"""


def _names(text):
  return [name for name in text.split(",") if name]


def build_parser():
  parser = argparse.ArgumentParser(
    description=__doc__.split("\n\n")[0] + " Train, evaluate and calibrate every "
    "variant, then write one comparison table and figures.",
    epilog=EXAMPLE,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  parser.add_argument(
    "--out",
    help="OUT: one folder per variant (its run and calibration), the "
    "comparison table and the figures (required but with --list)",
  )
  parser.add_argument(
    "--results",
    type=pathlib.Path,
    help="also write the comparison's table and figures here (the folder committed "
    "with the results, without the runs)",
  )
  parser.add_argument(
    "--smoke",
    action="store_true",
    help="a few short steps of the tiny demo model on a small corpus "
    "made in OUT/corpus: minutes on 2 CPU cores (a check of the "
    "plumbing, not results)",
  )
  parser.add_argument(
    "--config",
    type=pathlib.Path,
    help="the base experiment config (default: "
    "experiments/configs/ablation_full.py; with --smoke, "
    "eesep_jax/configs/demo.py)",
  )
  parser.add_argument(
    "--override",
    action="append",
    default=[],
    metavar="KEY=VALUE",
    help="a dotted override of the base config, e.g. data.root=/data/wsj0 (repeatable)",
  )
  parser.add_argument(
    "--variants", type=_names, metavar="A,B,...", help="run these variants only (see --list)"
  )
  parser.add_argument("--steps", type=int, help="training steps of every variant")
  parser.add_argument(
    "--max-utterances",
    type=int,
    help="evaluate at most this many utterances of the validation and "
    "of the test split (default: all)",
  )
  parser.add_argument(
    "--target-snr",
    type=float,
    help="γ in dB of the reported target satisfaction and of the "
    "certified threshold (default: the base config's "
    "inference.target_snr_db; with --smoke, 1)",
  )
  parser.add_argument(
    "--confidence",
    type=float,
    help="p of the reported target satisfaction (default: the base config's inference.confidence)",
  )
  parser.add_argument(
    "--list", action="store_true", help="print the variants and their overrides, and exit"
  )
  return parser


def main(argv=None):
  parser = build_parser()
  args = parser.parse_args(argv)
  if not (args.out or args.list):
    parser.error("--out is required")
  # Imported after parsing, so that `--help` does not load JAX; the driver from this
  # checkout, as `experiments.ablations.driver`.
  sys.path.insert(0, str(REPO))
  from eesep_jax import config_lib
  from eesep_jax import errors
  from eesep_jax.analysis import ablation
  from experiments.ablations import driver

  config_path = args.config or (SMOKE_CONFIG if args.smoke else FULL_CONFIG)
  variants = ablation.variants(
    config_lib.model_config(config_lib.load_config(config_path, args.override))
  )
  if args.list:
    for variant in variants:
      print(f"{variant.name:28} {variant.description}\n{'':28} {' '.join(variant.overrides)}")
    return 0
  try:  # Before any corpus is made or run trained.
    ablation.select_variants(variants, args.variants)
  except ValueError as error:
    parser.error(str(error))
  start = time.monotonic()
  try:
    comparison = driver.run_ablation(
      config_path,
      args.out,
      names=args.variants,
      overrides=args.override,
      smoke=args.smoke,
      steps=args.steps,
      max_utterances=args.max_utterances,
      target_snr_db=args.target_snr,
      confidence=args.confidence,
    )
  except errors.Preempted as preempted:  # The same command resumes at this variant.
    return errors.report_preempted(preempted)
  if args.results:
    ablation.write_comparison(args.results, comparison)
  print(ablation.markdown_table(comparison))
  print(
    f"wrote {args.out}/{{{','.join(ablation.FILES.values())}}} "
    f"in {(time.monotonic() - start) / 60:.1f} min"
  )
  return 0


if __name__ == "__main__":
  sys.exit(main())
