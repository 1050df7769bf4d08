"""PRESS-Net on the machine at hand, sized for an accelerator: train step time and MFU,
the layers' share of the step, the input pipeline against the step rate, and the
wall-clock saving of stopping next to its FLOP saving. Writes one JSON per kind of
machine.

    python experiments/benchmarks/accelerator.py [--smoke] [--out-dir DIR | --out FILE]

Runs unchanged on CPU, GPU and TPU (the default JAX device); the layers take the forms
`PressNetConfig`'s "auto" picks there. Networks have random weights. Each timing is
the median of `--repeats` calls after a compiling warm-up, interleaved in rounds.

Measured, for PRESS-4 and PRESS-12 at batch 16 × 4 s (`--presets`, `--batch`,
`--seconds`; `--smoke`: `tiny` at batch 2 × 0.1 s, seconds on a CPU):
  train: per compute dtype, the train step's seconds, steps/s, seconds of audio per
    second, and MFU: the model's FLOPs per step (three forward passes,
    `models.gmacs_by_exit`) over the step time over the device's peak FLOP/s
    (`hardware.peak_flops`, or `--peak-flops`; null where neither gives one, as on
    CPUs). `compiled_step_gflop` is XLA's cost analysis of the compiled step, which
    counts each loop body (block and stage scans) once: a lower bound, kept to
    compare with training logs that quote it.
  layers: for each form of the recurrence and of the depthwise convolution, the
    seconds of its forward and backward pass at the shape the exit blocks give it,
    times the blocks that run it (the shared blocks, with `1/C` of the streams, count
    `1/C` of a call each), over the train step's time: its share of the step.
  input_pipeline: examples per second of `data.training_loader` with dynamic mixing
    (in-process) on a corpus of noise written to a temporary folder, over the train
    step's examples per second in bfloat16.
  separate: `inference.separate` of batches of 1 and 8 mixtures, in seconds of compute
    per second of audio: at full depth, at the default target, and stopped at exit 1;
    with each the FLOP saving (the mean over examples of the compute their exits
    needed, against full depth), the executed saving (a batch runs until its last
    example stops) and the wall-clock saving.
"""

import argparse
import functools
import json
import pathlib
import re
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import soundfile

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
# pylint: disable=wrong-import-position
import run as benchmarks  # The sibling run.py: timing and device helpers.

from eesep_jax import config_lib
from eesep_jax import data
from eesep_jax import hardware
from eesep_jax import inference
from eesep_jax import models
from eesep_jax.models import layers
from eesep_jax.training import throughput
from eesep_jax.training import train

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
DTYPES = ("bfloat16", "float32")
SEPARATE_BATCHES = (1, 8)
# `model`: preset fields replaced; `--smoke` cuts `tiny` to two one-block stages, as
# `run.py --smoke` does: fewer programs to compile.
SIZES = {
  "full": {
    "presets": ("press-4", "press-12"),
    "batch": 16,
    "seconds": 4.0,
    "repeats": 5,
    "pipeline_batches": 20,
    "model": {},
  },
  "smoke": {
    "presets": ("tiny",),
    "batch": 2,
    "seconds": 0.1,
    "repeats": 1,
    "pipeline_batches": 2,
    "model": {"num_exits": 2, "num_exit_blocks": 2},
  },
}


def results_path(out_dir, device):
  """`accelerator_<platform>_<device kind>.json`, e.g. `accelerator_gpu_nvidia_h100.json`."""
  kind = re.sub(r"[^a-z0-9]+", "_", device["device_kind"].lower()).strip("_")
  return out_dir / f"accelerator_{device['platform']}_{kind}.json"


# --------------------------------------------------------------------------- training


def _train_step(config, batch, samples):
  """The compiled train step of `PressNet(config)` on random audio: a function that runs
  one step and blocks, and XLA's FLOP count of the compiled step (or None)."""
  experiment = config_lib.base_config(preset="tiny", dataset="wsj0-mix", data_root="unused")
  optimizer = train.make_optimizer(experiment.optimizer, total_steps=1000)
  model = models.PressNet(config)
  data_batch = benchmarks._batch(batch, samples, config.num_sources)  # pylint: disable=protected-access
  state = train.init_train_state(experiment, model, optimizer, data_batch["mixture"][:1])
  compiled = train.make_train_step(experiment, model, optimizer).lower(state, data_batch).compile()
  try:
    flops = compiled.cost_analysis()["flops"]
  except (KeyError, TypeError, NotImplementedError):  # Some backends give no analysis.
    flops = None
  holder = [state]

  def step():
    holder[0], metrics = compiled(holder[0], data_batch)
    jax.block_until_ready(metrics)

  return step, flops


def train_benchmark(preset, batch, seconds, repeats, peaks, model=None):
  """The train step in each of `DTYPES`, timed in the same rounds (`model`: preset
  fields replaced)."""
  samples = int(seconds * benchmarks.SAMPLE_RATE)
  configs = {dtype: models.preset(preset, dtype=dtype, **(model or {})) for dtype in DTYPES}
  steps = {dtype: _train_step(config, batch, samples) for dtype, config in configs.items()}
  times = benchmarks.interleaved_times([steps[dtype][0] for dtype in DTYPES], repeats)
  model_flops = throughput.model_flops_per_step(configs["float32"], batch, samples)
  results = {}
  for dtype, step_s in zip(DTYPES, times):
    peak = peaks[dtype]
    compiled_flops = steps[dtype][1]
    results[dtype] = {
      "step_s": step_s,
      "steps_per_s": 1 / step_s,
      "audio_seconds_per_s": batch * seconds / step_s,
      "model_gflop_per_step": model_flops / 1e9,
      "compiled_step_gflop": None if compiled_flops is None else compiled_flops / 1e9,
      "achieved_tflops": model_flops / step_s / 1e12,
      "peak_tflops": None if peak is None else peak / 1e12,
      "mfu": None if peak is None else model_flops / step_s / peak,
    }
  return results


# --------------------------------------------------------------------------- layers


def _layer_pass(function, inputs):
  """`function(*inputs)`'s forward and backward pass, compiled: a function that blocks."""
  weights = jax.random.normal(jax.random.key(3), jax.eval_shape(function, *inputs).shape)
  # The weights are an argument, not a constant XLA would fold at compile time.
  gradient = jax.jit(
    jax.grad(
      lambda weights, *args: jnp.sum(weights * function(*args).astype(jnp.float32)),
      argnums=tuple(range(1, len(inputs) + 1)),
    )
  )
  return lambda: jax.block_until_ready(gradient(weights, *inputs))


def layer_benchmark(preset, batch, seconds, repeats, step_s, model=None):
  """Each form of the recurrence and the depthwise convolution: its share of a step of
  `step_s` seconds (see the module docstring)."""
  config = models.preset(preset, dtype="bfloat16", **(model or {}))
  frames = models.frame_layout(int(seconds * benchmarks.SAMPLE_RATE), config)[2]
  streams = batch * config.num_sources
  calls = config.num_exit_blocks + config.num_shared_blocks / config.num_sources
  keys = jax.random.split(jax.random.key(0), 3)
  hidden = 2 * config.rnn_expansion * config.width
  decay = jax.random.uniform(keys[0], (streams, frames, hidden), jnp.float32, 0.9, 1.0)
  update = jax.random.normal(keys[1], (streams, frames, hidden), jnp.float32)
  channels = config.conv_expansion * config.width
  x = jax.random.normal(keys[2], (streams, frames, channels), config.compute_dtype)
  kernel = jax.random.normal(keys[0], (config.conv_kernel, channels), config.compute_dtype)
  passes = {
    f"recurrence/{form}": _layer_pass(
      functools.partial(layers.bidirectional_linear_recurrence, form=form), (decay, update)
    )
    for form in models.config.RECURRENCE_FORMS[1:]
  }
  passes.update(
    {
      f"depthwise/{form}": _layer_pass(
        functools.partial(layers.depthwise_convolution, form=form), (x, kernel)
      )
      for form in models.config.DEPTHWISE_FORMS[1:]
    }
  )
  times = benchmarks.interleaved_times(list(passes.values()), repeats)
  return {
    "shape": {"recurrence": [streams, frames, hidden], "depthwise": [streams, frames, channels]},
    "calls_per_step": calls,
    "forms_in_use": {
      "recurrence": config.resolved_recurrence_form,
      "depthwise": config.resolved_depthwise_form,
    },
    "pass_s": dict(zip(passes, times)),
    "share_of_bfloat16_step": {name: t * calls / step_s for name, t in zip(passes, times)},
  }


# --------------------------------------------------------------------------- input


def _write_noise_corpus(root, examples, seconds, sample_rate):
  """A wsj0-mix-layout training split of `examples` two-source mixtures of noise."""
  rng = np.random.default_rng(0)
  length = int(seconds * sample_rate)
  for k in range(examples):
    sources = 0.1 * rng.standard_normal((2, length))
    for folder, signal in (("mix", sources.sum(0)), ("s1", sources[0]), ("s2", sources[1])):
      (root / "tr" / folder).mkdir(parents=True, exist_ok=True)
      soundfile.write(root / "tr" / folder / f"{k:04d}.wav", signal, sample_rate, subtype="PCM_16")


def pipeline_benchmark(batch, seconds, batches):
  """Examples per second of `data.training_loader` with dynamic mixing, in-process,
  over `batches` batches after the first."""
  with tempfile.TemporaryDirectory() as root:
    root = pathlib.Path(root)
    _write_noise_corpus(root, max(4 * batch, 8), seconds + 1.0, benchmarks.SAMPLE_RATE)
    source = data.open_dataset(
      "wsj0-mix", root, "tr", sample_rate=benchmarks.SAMPLE_RATE, num_sources=2
    )
    iterator = iter(
      data.training_loader(
        source, batch_size=batch, seed=0, segment_seconds=seconds, dynamic_mixing=True
      )
    )
    next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
      next(iterator)
    return batches * batch / (time.perf_counter() - start)


# --------------------------------------------------------------------------- separate


def separate_benchmark(preset, seconds, repeats, model=None):
  """`inference.separate` at full depth, at the default target and at exit 1, for each
  of `SEPARATE_BATCHES` (see the module docstring)."""
  config = models.preset(preset, dtype="bfloat16", **(model or {}))
  samples = int(seconds * config.sample_rate)
  variables = jax.jit(models.PressNet(config).init)(
    jax.random.key(0), jnp.zeros((1, config.encoder_kernel))
  )
  full_gmacs = models.gmacs_by_exit(config, samples)
  policies = {
    "full_depth": {"policy": "fixed", "exit_index": config.num_exits},
    "default_target": {},
    "exit_1": {"policy": "fixed", "exit_index": 1},
  }
  results = {}
  for batch in SEPARATE_BATCHES:
    mixture = jax.random.normal(jax.random.key(batch), (batch, samples))
    outcome = {}

    def separate(name, kwargs):
      outcome[name] = jax.block_until_ready(
        inference.separate(variables, config, mixture, **kwargs)
      )

    times = benchmarks.interleaved_times(
      [functools.partial(separate, name, kwargs) for name, kwargs in policies.items()], repeats
    )
    full_s = times[0]
    per_policy = {}
    for (name, _), seconds_taken in zip(policies.items(), times):
      exits = np.asarray(outcome[name].exit_index)
      per_policy[name] = {
        "seconds_per_audio_second": seconds_taken / (batch * seconds),
        "exits": exits.tolist(),
        "flop_saving": 1 - float(np.mean(outcome[name].gmacs)) / full_gmacs[-1],
        "executed_flop_saving": 1 - full_gmacs[int(exits.max()) - 1] / full_gmacs[-1],
        "wall_clock_saving": 1 - seconds_taken / full_s,
      }
    results[f"batch_{batch}"] = per_policy
  return results


# --------------------------------------------------------------------------- main


def _peaks(device, overrides):
  """Peak FLOP/s per dtype: `--peak-flops` where given, else `hardware.peak_flops`."""
  return {dtype: overrides.get(dtype, hardware.peak_flops(device, dtype)) for dtype in DTYPES}


def run(size, peak_overrides, log=print):
  """Every measurement at `size` (`SIZES`' entries); the JSON-ready results."""
  start = time.perf_counter()
  device = jax.devices()[0]
  peaks = _peaks(device, peak_overrides)
  results = {
    "device": benchmarks.device_info(),
    "size": size,
    "peak_flops": peaks,
    "peak_flops_overridden": sorted(peak_overrides),
    "presets": {},
  }
  for preset in size["presets"]:
    trained = train_benchmark(
      preset, size["batch"], size["seconds"], size["repeats"], peaks, size["model"]
    )
    log(
      f"[{time.perf_counter() - start:6.0f} s] {preset}: train step "
      + ", ".join(f"{dtype} {trained[dtype]['step_s']:.3f} s" for dtype in DTYPES)
    )
    step_s = trained["bfloat16"]["step_s"]
    layer_shares = layer_benchmark(
      preset, size["batch"], size["seconds"], size["repeats"], step_s, size["model"]
    )
    log(f"[{time.perf_counter() - start:6.0f} s] {preset}: layers")
    separated = separate_benchmark(preset, size["seconds"], size["repeats"], size["model"])
    log(f"[{time.perf_counter() - start:6.0f} s] {preset}: separate")
    results["presets"][preset] = {"train": trained, "layers": layer_shares, "separate": separated}
  step_examples = (
    size["batch"] / results["presets"][size["presets"][0]]["train"]["bfloat16"]["step_s"]
  )
  pipeline = pipeline_benchmark(size["batch"], size["seconds"], size["pipeline_batches"])
  results["input_pipeline"] = {
    "examples_per_s": pipeline,
    "workers": 0,
    "dynamic_mixing": True,
    "train_examples_per_s": step_examples,
    "preset": size["presets"][0],
    "pipeline_over_train": pipeline / step_examples,
  }
  log(f"[{time.perf_counter() - start:6.0f} s] input pipeline {pipeline:.1f} examples/s")
  results["benchmark_seconds"] = time.perf_counter() - start
  return results


def _peak_override(text):
  """`dtype=FLOP/s` (e.g. `bfloat16=989e12`) -> `(dtype, float)`."""
  dtype, _, value = text.partition("=")
  if dtype not in DTYPES or not value:
    raise argparse.ArgumentTypeError(f"{text!r}: must be DTYPE=FLOPS, DTYPE one of {DTYPES}")
  return dtype, float(value)


def main(argv=None):
  parser = argparse.ArgumentParser(
    description="\n\n".join(__doc__.split("\n\n")[:2]),
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  parser.add_argument(
    "--smoke",
    action="store_true",
    help="`tiny` at batch 2 × 0.1 s, one repeat: checks that it runs",
  )
  parser.add_argument("--presets", nargs="+", help="presets (default press-4 press-12)")
  parser.add_argument("--batch", type=int, help="train batch (default 16)")
  parser.add_argument("--seconds", type=float, help="segment seconds (default 4)")
  parser.add_argument("--repeats", type=int, help="timed calls of each (default 5)")
  parser.add_argument(
    "--peak-flops",
    type=_peak_override,
    action="append",
    default=[],
    metavar="DTYPE=FLOPS",
    help="the device's peak FLOP/s in a dtype, e.g. bfloat16=989e12 "
    "(default: hardware.peak_flops; none for CPUs)",
  )
  parser.add_argument(
    "--out-dir",
    type=pathlib.Path,
    default=RESULTS,
    help="where accelerator_<platform>_<device kind>.json goes",
  )
  parser.add_argument("--out", type=pathlib.Path, help="the JSON file (overrides --out-dir)")
  args = parser.parse_args(argv)
  size = dict(SIZES["smoke" if args.smoke else "full"])
  for key in ("presets", "batch", "seconds", "repeats"):
    if getattr(args, key) is not None:
      size[key] = tuple(args.presets) if key == "presets" else getattr(args, key)
  results = run(
    size, dict(args.peak_flops), log=lambda line: print(line, file=sys.stderr, flush=True)
  )
  out = args.out or results_path(args.out_dir, results["device"])
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(results, indent=2) + "\n")
  print(f"Results: {out}")


if __name__ == "__main__":
  main()
