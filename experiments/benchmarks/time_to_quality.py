"""Validation SI-SNRi against wall-clock training time: the demo against a plain network.

    python experiments/benchmarks/time_to_quality.py \
        --out-dir experiments/benchmarks/results/time_to_quality [--peer]

Trains, one after the other on the same corpus and cores:
- `demo`: the demo config (`eesep_jax/configs/demo.py`), every exit and the joint
  mean/variance objective, as `make demo` trains it;
- `single_exit`: the same network and recipe cut to one exit after all of its blocks
  (the demo's last-exit compute, without the other exits' heads), trained with
  SI-SNR alone: the plain separation network a user would otherwise train;
- with `--peer`, when PyTorch and Asteroid are installed: Asteroid's Conv-TasNet,
  trained with PIT SI-SNR for the demo's wall-clock time (`peer_convtasnet`). Neither
  is a dependency of eesep_jax: the option fails with a message when they are missing.

Every run validates `--points` times on the validation split (the demo config's
`eval_max_utterances`) and records the training seconds spent so far, validation
excluded. Writes `time_to_quality.json` (the curves) and `time_to_quality.png`.
`--reuse` reads the first two curves from runs that finished in `--out-dir`, so that
`--peer` can be added to an earlier measurement (on the same machine) without training
them again.
"""

import argparse
import json
import pathlib
import shutil
import time

from matplotlib import figure
import tqdm

from eesep_jax import config_lib
from eesep_jax import data
from eesep_jax.app import demo
from eesep_jax.training import checkpoints
from eesep_jax.training import train

DEMO_CONFIG = demo.DEMO_CONFIG


def _curve(workdir):
  """`(train_seconds, last exit's validation SI-SNRi)` pairs from `metrics.jsonl`."""
  points = []
  with open(pathlib.Path(workdir) / "metrics.jsonl", encoding="utf-8") as file:
    for line in file:
      record = json.loads(line)
      if "valid_si_snri" in record:
        points.append((record["train_seconds"], record["valid_si_snri"][-1]))
  return points


def single_exit_config(config):
  """`config` cut to one exit after all of its exit blocks, trained by SI-SNR alone."""
  config = config.copy_and_resolve_references()
  config.model.num_exits = 1
  config.loss.objective = "si-snr"
  config.loss.exit_weights = None
  return config


def _train(config, workdir, reuse):
  """The run's curve: trained afresh in `workdir`, or with `reuse` read from the run
  that finished there (a resumed run restarts its clock, so only a finished one will do)."""
  if reuse:
    step = checkpoints.latest_step(workdir)
    if step != config.steps:
      raise SystemExit(
        f"error: --reuse: {workdir} holds no finished run (latest checkpoint "
        f"{step}, {config.steps} steps asked); run without --reuse"
      )
    return _curve(workdir)
  shutil.rmtree(workdir, ignore_errors=True)
  train.train_and_evaluate(config, workdir)
  return _curve(workdir)


def _peer_curve(config, seconds, points):
  """Asteroid's Conv-TasNet trained with PIT SI-SNR for `seconds` (see the docstring)."""
  try:
    from asteroid import losses as asteroid_losses  # pylint: disable=import-outside-toplevel
    from asteroid.models import ConvTasNet  # pylint: disable=import-outside-toplevel
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError as error:
    raise SystemExit(f"error: --peer: needs torch and asteroid installed ({error})") from None
  import numpy as np  # pylint: disable=import-outside-toplevel

  segment = int(config.data.segment_seconds * config.model.sample_rate)
  loader = iter(
    data.training_loader(
      data.training_source(config),
      batch_size=config.batch_size,
      seed=config.seed,
      segment_length=segment,
      dynamic_mixing=config.data.dynamic_mixing,
    )
  )
  model = ConvTasNet(
    n_src=config.model.num_sources,
    n_blocks=4,
    n_repeats=2,
    bn_chan=64,
    hid_chan=128,
    skip_chan=64,
    n_filters=128,
    sample_rate=config.model.sample_rate,
  )
  optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
  loss_fn = asteroid_losses.PITLossWrapper(asteroid_losses.pairwise_neg_sisdr, pit_from="pw_mtx")
  valid = list(data.validation_batches(config))

  def validate():
    model.eval()
    gains = []
    with torch.no_grad():
      for batch in valid:
        length = int(batch["length"][0])
        mixture = torch.from_numpy(batch["mixture"][:, :length])
        sources = torch.from_numpy(batch["sources"][:, :, :length])
        estimate = model(mixture)
        baseline = mixture[:, None].expand_as(sources)
        gains.append(float(loss_fn(baseline, sources) - loss_fn(estimate, sources)))
    model.train()
    return float(np.mean(gains))

  curve, spent, next_point = [], 0.0, seconds / points
  with tqdm.tqdm(
    total=seconds,
    desc="peer_convtasnet",
    bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s of training{postfix}",
  ) as progress:
    while spent < seconds:
      batch = next(loader)
      start = time.perf_counter()
      loss = loss_fn(model(torch.from_numpy(batch["mixture"])), torch.from_numpy(batch["sources"]))
      optimizer.zero_grad()
      loss.backward()
      optimizer.step()
      step_seconds = time.perf_counter() - start
      spent += step_seconds
      progress.update(min(step_seconds, seconds - progress.n))
      if spent >= next_point or spent >= seconds:
        curve.append((spent, validate()))
        next_point += seconds / points
        progress.set_postfix(valid_si_snri=f"{curve[-1][1]:.2f} dB")
  return curve


def _figure(curves):
  fig = figure.Figure(figsize=(6, 4))
  axes = fig.subplots()
  for name, curve in curves.items():
    seconds, si_snri = zip(*curve) if curve else ((), ())
    axes.plot([s / 60 for s in seconds], si_snri, marker="o", label=name)
  axes.set_xlabel("training time (min, validation excluded)")
  axes.set_ylabel("validation SI-SNRi at the last exit (dB)")
  axes.grid(alpha=0.3)
  axes.legend()
  fig.tight_layout()
  return fig


def main(argv=None):
  parser = argparse.ArgumentParser(
    description=__doc__.split("\n\n")[0],
    epilog=__doc__.split("\n\n", 1)[1],
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  parser.add_argument("--out-dir", required=True, help="where the runs, JSON and PNG go")
  parser.add_argument("--points", type=int, default=6, help="validations per run")
  parser.add_argument("--steps", type=int, help="training steps (default: the demo's)")
  parser.add_argument(
    "--data-root", help="a corpus in the demo's layout (default: the demo corpus, made if missing)"
  )
  parser.add_argument(
    "--peer", action="store_true", help="also train Asteroid's Conv-TasNet (needs torch, asteroid)"
  )
  parser.add_argument(
    "--reuse",
    action="store_true",
    help="read the demo and single-exit curves from the runs that finished "
    "in --out-dir instead of training them again (to add --peer later)",
  )
  args = parser.parse_args(argv)

  out_dir = pathlib.Path(args.out_dir).resolve()
  config = config_lib.load_config(DEMO_CONFIG)
  if args.steps:
    config.steps = args.steps
  config.eval_every = max(1, config.steps // args.points)
  if args.data_root:
    config.data.root = args.data_root
    config.data.synthesize_if_missing = False
  else:
    data.ensure_demo_corpus(
      config.data.root, sample_rate=config.model.sample_rate, num_sources=config.model.num_sources
    )
  curves = {
    "demo": _train(config, out_dir / "demo", args.reuse),
    "single_exit": _train(single_exit_config(config), out_dir / "single_exit", args.reuse),
  }
  if args.peer:
    curves["peer_convtasnet"] = _peer_curve(config, curves["demo"][-1][0], args.points)
  result = {
    "steps": config.steps,
    "batch_size": config.batch_size,
    "segment_seconds": config.data.segment_seconds,
    "curves": {
      name: [{"train_seconds": s, "valid_si_snri": v} for s, v in curve]
      for name, curve in curves.items()
    },
  }
  (out_dir / "time_to_quality.json").write_text(json.dumps(result, indent=2) + "\n")
  _figure(curves).savefig(out_dir / "time_to_quality.png", dpi=120)
  print(json.dumps({name: curve[-1] for name, curve in curves.items()}))


if __name__ == "__main__":
  main()
