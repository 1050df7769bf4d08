"""Evaluation throughput: padded length buckets against one compilation per length.

    python experiments/benchmarks/eval_throughput.py --checkpoint runs/demo \
        --out experiments/benchmarks/results/eval_throughput_cpu.json

Times `evaluate.evaluate_model` over the same test utterances twice, from empty jit
caches each time, in one process:
- bucketed: utterances sorted by length, `evaluate.EVAL_BATCH` per forward, padded to
  a multiple of `evaluate.PAD_SECONDS` with their valid lengths (what `eesep
  evaluate` and the demo do): one compilation per bucket;
- per length: one utterance per forward, unpadded (what evaluation did before the
  valid-length mask): one compilation per distinct length.
Compilation is part of what a user waits for, so it is counted. Prints and writes
utterances per second of both and their ratio.
"""

import argparse
import json
import platform
import time
from unittest import mock

import jax

from eesep_jax import data
from eesep_jax.analysis import evaluate
from eesep_jax.training import checkpoints


def _timed_evaluation(variables, model_config, source, max_utterances):
  jax.clear_caches()
  start = time.perf_counter()
  _, summary = evaluate.evaluate_model(
    variables, model_config, source, max_utterances=max_utterances, progress=False
  )
  return time.perf_counter() - start, summary["num_utterances"]


def main(argv=None):
  parser = argparse.ArgumentParser(
    description=__doc__.split("\n\n")[0],
    epilog=__doc__.split("\n\n", 1)[1],
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  parser.add_argument("--checkpoint", default="runs/demo", help="a training workdir")
  parser.add_argument(
    "--max-utterances",
    type=int,
    default=30,
    help="test utterances, evenly spread (default: 30, as the demo)",
  )
  parser.add_argument("--out", help="JSON file for the results")
  args = parser.parse_args(argv)

  config = checkpoints.read_config(args.checkpoint)
  model_config, variables = checkpoints.restore_params(args.checkpoint)
  source = data.open_split(config, config.data.test_split)
  bucketed_seconds, count = _timed_evaluation(variables, model_config, source, args.max_utterances)
  with (
    mock.patch.object(evaluate, "EVAL_BATCH", 1),
    mock.patch.object(evaluate, "PAD_SECONDS", 1 / model_config.sample_rate),
  ):
    per_length_seconds, _ = _timed_evaluation(variables, model_config, source, args.max_utterances)
  result = {
    "device": jax.devices()[0].device_kind,
    "platform": platform.platform(),
    "jax": jax.__version__,
    "checkpoint": args.checkpoint,
    "utterances": count,
    "eval_batch": evaluate.EVAL_BATCH,
    "pad_seconds": evaluate.PAD_SECONDS,
    "bucketed_utterances_per_second": count / bucketed_seconds,
    "per_length_utterances_per_second": count / per_length_seconds,
    "bucketed_over_per_length": per_length_seconds / bucketed_seconds,
  }
  print(json.dumps(result, indent=2))
  if args.out:
    with open(args.out, "w", encoding="utf-8") as file:
      json.dump(result, file, indent=2)
      file.write("\n")


if __name__ == "__main__":
  main()
