"""The `eesep` command line: one sub-command per job, each with an example in `--help`."""

import argparse
import json
import sys
import textwrap


def _add_command(subparsers, name, handler, help_text, example):
  parser = subparsers.add_parser(
      name, help=help_text, description=help_text,
      epilog=f"example:\n  {example}", formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.set_defaults(handler=handler)
  return parser


def info(args):
  """Prints a preset's size and compute per exit."""
  from eesep_jax import models  # Imported here so `eesep --help` does not load JAX.

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
  print(f"{report['preset']}: {report['params'] / 1e6:.2f} M parameters, "
        f"{report['exits']} exits")
  for k, gmacs in enumerate(report["gmacs_per_second_by_exit"], start=1):
    print(f"  exit {k:2d}: {gmacs:7.2f} GMAC per second of "
          f"{config.sample_rate // 1000} kHz audio")


def demo(args):
  """Runs the quickstart job (see `eesep_jax.demo`)."""
  from eesep_jax import demo as demo_job

  demo_job.main(workdir=args.workdir)


def build_parser():
  parser = argparse.ArgumentParser(
      prog="eesep", description=textwrap.dedent("""\
          eesep_jax: speech separation networks that know when to quit.
          Run `eesep COMMAND --help` for each command's options and an example."""),
      formatter_class=argparse.RawDescriptionHelpFormatter)
  subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

  parser_info = _add_command(
      subparsers, "info", info, "Print a preset's parameter count and GMAC/s per exit.",
      "eesep info --preset press-4 --json")
  parser_info.add_argument("--preset", required=True, help="tiny, press-4 or press-12")
  parser_info.add_argument("--json", action="store_true", help="print one JSON object")

  parser_demo = _add_command(
      subparsers, "demo", demo, "Run the quickstart job end to end (what `make demo` runs).",
      "eesep demo --workdir runs/demo")
  parser_demo.add_argument("--workdir", default="runs/demo", help="where outputs go")

  from eesep_jax.data import cli as data_cli
  data_cli.add_data_commands(subparsers)
  return parser


def main(argv=None):
  args = build_parser().parse_args(argv)
  return args.handler(args)


if __name__ == "__main__":
  sys.exit(main())
