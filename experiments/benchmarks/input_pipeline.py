"""Input pipeline throughput: training examples per second with 0, 1 and 2 grain workers.

    python experiments/benchmarks/input_pipeline.py \
        --out experiments/benchmarks/results/input_pipeline_cpu.json

Times `data.training_loader` as `eesep train` builds it for `wsj0_2mix_press4` (dynamic
mixing, 8 kHz, batch 64 x 4 s segments) on a corpus of 5 s 16-bit WAV files in the
wsj0-mix layout, written to a temporary folder first (the pipeline reads, crops, levels
and sums tracks; what they hold does not change its cost). For each worker count, the
first batch (worker start-up) is left out and the next `--batches` are timed. Prints
and writes examples per second, and per worker. `--smoke` runs a tiny size (what the
tests run).
"""

import argparse
import json
import os
import pathlib
import platform
import tempfile
import time

import numpy as np
import soundfile

from eesep_jax import data

SAMPLE_RATE = 8000
FILE_SECONDS = 5.0


def write_corpus(root, num_examples, seconds=FILE_SECONDS, num_sources=2):
  """`root/tr/{mix,s1,...}/NNNN.wav`, noise of `seconds` each."""
  rng = np.random.default_rng(0)
  for index in range(num_examples):
    sources = 0.1 * rng.standard_normal((num_sources, int(seconds * SAMPLE_RATE)))
    for folder, signal in [
      ("mix", sources.sum(0)),
      *((f"s{k + 1}", source) for k, source in enumerate(sources)),
    ]:
      path = root / "tr" / folder / f"{index:04d}.wav"
      path.parent.mkdir(parents=True, exist_ok=True)
      soundfile.write(path, signal.astype(np.float32), SAMPLE_RATE, subtype="PCM_16")


def examples_per_second(source, *, batch_size, segment_seconds, workers, batches):
  """Examples per second of `batches` batches after the first."""
  loader = data.training_loader(
    source,
    batch_size=batch_size,
    seed=0,
    segment_seconds=segment_seconds,
    num_workers=workers,
    dynamic_mixing=True,
  )
  iterator = iter(loader)
  next(iterator)  # Worker start-up, and the first reads.
  start = time.perf_counter()
  for _ in range(batches):
    batch = next(iterator)
  seconds = time.perf_counter() - start
  assert batch["mixture"].shape == (batch_size, round(segment_seconds * SAMPLE_RATE))
  return batches * batch_size / seconds


def main(argv=None):
  parser = argparse.ArgumentParser(
    description=__doc__.split("\n\n")[0],
    epilog=__doc__.split("\n\n", 1)[1],
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  parser.add_argument("--out", type=pathlib.Path, help="write the results JSON here")
  parser.add_argument("--batches", type=int, default=10, help="timed batches per setting")
  parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
  parser.add_argument("--smoke", action="store_true", help="a tiny size, for the tests")
  args = parser.parse_args(argv)
  batch_size, segment_seconds, num_examples = (4, 0.25, 8) if args.smoke else (64, 4.0, 256)
  batches = 2 if args.smoke else args.batches
  with tempfile.TemporaryDirectory() as directory:
    root = pathlib.Path(directory)
    write_corpus(root, num_examples, seconds=1.0 if args.smoke else FILE_SECONDS)
    source = data.open_dataset("wsj0-mix", root, "tr", sample_rate=SAMPLE_RATE)
    rates = {}
    for workers in args.workers:
      rates[workers] = examples_per_second(
        source,
        batch_size=batch_size,
        segment_seconds=segment_seconds,
        workers=workers,
        batches=batches,
      )
      print(
        f"{workers} workers: {rates[workers]:.1f} examples/s "
        f"({rates[workers] / batch_size:.2f} batches/s of {batch_size} x "
        f"{segment_seconds:g} s)"
      )
  results = {
    "machine": {
      "platform": platform.platform(),
      "processor": platform.processor(),
      "cpu_count": os.cpu_count(),
    },
    "smoke": args.smoke,
    "batch_size": batch_size,
    "segment_seconds": segment_seconds,
    "dynamic_mixing": True,
    "timed_batches": batches,
    "examples_per_second": {str(w): rate for w, rate in rates.items()},
    "examples_per_second_per_worker": {str(w): rate / w for w, rate in rates.items() if w},
  }
  if args.out:
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
  return results


if __name__ == "__main__":
  main()
