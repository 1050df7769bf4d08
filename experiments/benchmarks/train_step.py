"""Median time of one train step of a preset, for comparing two versions of the code.

It uses only the long-standing API (`config_lib`, `models`, `train`), so it runs
against an older checkout too: put that checkout first on `PYTHONPATH`. Run both in
turn on an idle machine and divide:

    git worktree add /tmp/old 8ccd0f3
    PYTHONPATH=/tmp/old python experiments/benchmarks/train_step.py --preset tiny
    python experiments/benchmarks/train_step.py --preset tiny
"""

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

import eesep_jax
from eesep_jax import config_lib
from eesep_jax import models
from eesep_jax.training import train


def main(argv=None):
  parser = argparse.ArgumentParser(
    description=__doc__.split("\n\n")[0],
    epilog=__doc__.split("\n\n", 1)[1],
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  parser.add_argument("--preset", default="tiny", help="model preset (default: tiny)")
  parser.add_argument("--batch", type=int, default=4, help="examples per step (default: 4)")
  parser.add_argument(
    "--samples",
    type=int,
    default=8000,
    help="samples per example (default: 8000, 1 s as in the demo)",
  )
  parser.add_argument("--repeats", type=int, default=7, help="timed steps (default: 7)")
  args = parser.parse_args(argv)

  config = config_lib.base_config(preset=args.preset, dataset="wsj0-mix", data_root="unused")
  model_config = models.preset(args.preset)
  model = models.PressNet(model_config)
  optimizer = train.make_optimizer(config.optimizer, total_steps=1000)
  rng = np.random.default_rng(0)
  shape = (args.batch, args.samples)
  batch = {
    "mixture": jnp.asarray(rng.normal(size=shape), jnp.float32),
    "sources": jnp.asarray(
      rng.normal(size=(args.batch, model_config.num_sources, args.samples)), jnp.float32
    ),
    "mask": jnp.ones(shape, jnp.float32),
  }
  state = train.init_train_state(config, model, optimizer, batch["mixture"][:1])
  start = time.perf_counter()
  step = train.make_train_step(config, model, optimizer).lower(state, batch).compile()
  compile_seconds = time.perf_counter() - start
  times = []
  for _ in range(args.repeats + 1):  # The first call warms up.
    start = time.perf_counter()
    state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - start)
  print(
    json.dumps(
      {
        "package": eesep_jax.__file__,
        "preset": args.preset,
        "batch": args.batch,
        "samples": args.samples,
        "compile_s": compile_seconds,
        "step_s": float(np.median(times[1:])),
      }
    )
  )


if __name__ == "__main__":
  main()
