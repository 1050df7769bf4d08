"""Performance benchmarks of PRESS-Net: training every exit, compile time, stopping
inference, real-time factor and long files. Writes one JSON file.

    python experiments/benchmarks/run.py [--quick | --smoke] --out results.json

Every ratio divides two timings taken in the same run, each the median of several
repeats after a warm-up call (which compiles). Runs unchanged on CPU, GPU or TPU (the
default JAX device). `--quick` (under 10 minutes on 2 CPU cores) uses smaller batches,
fewer repeats and a 2-minute long file instead of a 10-minute one; `--smoke` (for the
tests: a minute) measures `tiny` alone at sizes too small to mean anything. Networks have
random weights: the stopping results (`rtf_press4_stop`) depend on where an untrained
network's exits happen to stop, and `rtf_press4_stop_mean_exit` records it.

Keys (per preset under `presets`, with the batch and segment length measured):
  train_all_exits_over_last_exit: a train step of PRESS-Net, which computes and trains
    every exit, over one of `LastExitOnly`, the same network without the exits but the
    last (a plain separation network of the same depth). Weighting the other exits'
    losses to zero would still compute their heads, which is not the baseline a user
    of a single-exit network has.
  train_mfu: the train step's model FLOP/s (`throughput.model_flops_per_step`) over those of a large
    float32 matmul timed in the same rounds (`train.peak_matmul_gflops`; the top-level
    `peak_matmul_gflops` is the best of a few timings at the start).
  stop_at_k_over_full: entry `k-1`, `separate(policy="fixed", exit_index=k)` over the
    full depth; `stop_at_k_compute_fraction` is the ratio of the compute
    (`models.gmacs_by_exit`), which the encoder and shared trunk keep above `k/E`.
  while_loop_over_static: entry `k-1`, the stopping loop stopping at `k` over a
    network of `k` stages compiled on its own, returning what the loop computes: every
    exit's estimates and variance parameters (asked for the last estimates alone, XLA
    would drop the variance heads, which the loop needs to decide).
Top level:
  compile_scan_e12_over_e2: compile time of the train step with 12 stages over 2 (the
    stage of `tiny`), stages stacked with `nn.scan`; `compile_unrolled_e12_over_e2`
    the same with a Python loop over the stages (`UnrolledPressNet`), for contrast
    (`compile_unrolled_e4_over_e2` with `--quick`).
  rtf_press4_full, rtf_press4_stop: `separate_long` time over the duration of 60 s of
    audio, at full depth and with `separate`'s default stopping target.
  long_file_peak_rss_gb, long_file_throughput_over_60s: `separate_long` on a long file
    (`long_file_seconds`) in a fresh process: its peak resident memory, and its audio
    seconds per second over that of the 60 s file in the same process.
  targets: each target and whether this run met it.
"""

import argparse
import dataclasses
import functools
import json
import os
import pathlib
import platform
import resource
import subprocess
import sys
import time
from unittest import mock

import flax.linen as nn
import jax
import jax.numpy as jnp
import jaxlib
import numpy as np

from eesep_jax import config_lib
from eesep_jax import inference
from eesep_jax import models
from eesep_jax.models import press_net
from eesep_jax.training import throughput
from eesep_jax.training import train

SAMPLE_RATE = 8000
RTF_SECONDS = 60.0

# Per preset: (batch, seconds) of the train step and of the stopping-loop measurements.
TRAIN_SIZES = {"tiny": (8, 2.0), "press-4": (4, 2.0)}
QUICK_TRAIN_SIZES = {"tiny": (8, 1.0), "press-4": (2, 0.5)}
INFERENCE_SIZES = {"tiny": (4, 4.0), "press-4": (4, 4.0)}
QUICK_INFERENCE_SIZES = {"tiny": (4, 1.0), "press-4": (2, 1.0)}
SMOKE_SIZES = {"tiny": (1, 0.05)}
# `--smoke` cuts `tiny` to two one-block stages: fewer programs to compile.
SMOKE_OVERRIDES = {"num_exits": 2, "num_exit_blocks": 2}


# --------------------------------------------------------------------------- timing


def median_time(function, repeats, warmup=1):
  """Median wall time of `function()` over `repeats` calls after `warmup` calls.

  `function` must block until its result is ready (`jax.block_until_ready`).
  """
  return interleaved_times([function], repeats, warmup)[0]


def interleaved_times(functions, repeats, warmup=1):
  """Median wall time of each of `functions` (which must block until their results are
  ready), called in turn for `repeats` rounds after `warmup` calls each, so that a
  change in the machine's load during the run reaches all of them alike."""
  for function in functions:
    for _ in range(warmup):
      function()
  times = [[] for _ in functions]
  for _ in range(repeats):
    for function, record in zip(functions, times):
      record.append(_elapsed(function))
  return [float(np.median(record)) for record in times]


def device_info():
  """What the benchmark ran on."""
  device = jax.devices()[0]
  return {
    "platform": device.platform,
    "device_kind": device.device_kind,
    "device_count": jax.device_count(),
    "cpu_count": os.cpu_count(),
    "jax_version": jax.__version__,
    "jaxlib_version": jaxlib.__version__,
    "python": platform.python_version(),
    "machine": platform.machine(),
  }


def matmul_size():
  """Side of the square float32 matmul whose FLOP/s stand for the machine's peak."""
  return 2048 if jax.devices()[0].platform == "cpu" else 8192


def _matmul(size):
  """A compiled `[size, size]` float32 matmul as a function that blocks, and its FLOPs."""
  a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32)
  b = jax.random.normal(jax.random.key(1), (size, size), jnp.float32)
  matmul = jax.jit(jnp.matmul)
  return lambda: jax.block_until_ready(matmul(a, b)), 2 * size**3


def peak_matmul_gflops(size, repeats=5):
  """GFLOP/s of a `[size, size]` float32 matmul, the best of `repeats` timings."""
  run, flops = _matmul(size)
  run()
  return flops / min(_elapsed(run) for _ in range(repeats)) / 1e9


def _elapsed(function):
  start = time.perf_counter()
  function()
  return time.perf_counter() - start


# --------------------------------------------------------------------------- networks


class _Trunk(nn.Module):
  """A stage without its exit, as the body of `nn.scan`."""

  config: models.PressNetConfig

  @nn.compact
  def __call__(self, features, mask, train):
    return press_net.stage_trunk(self.config, features, mask, train), None


class _Exit(nn.Module):
  config: models.PressNetConfig

  @nn.compact
  def __call__(self, features, basis, lengths, variance_state, mixture_length):
    return press_net.stage_exit(
      self.config, features, basis, lengths, variance_state, mixture_length
    )


class LastExitOnly(models.PressNet):
  """PRESS-Net without its exits but the last: the same encoder, shared trunk, split
  and stages (blocks and speaker attention, stacked with `nn.scan`), then one decoder
  head and one variance head. Returns `PressNet`'s outputs with one exit."""

  def setup(self):
    super().setup()  # `self.stages` stays unused, so it has no parameters.
    cfg = self.config
    trunk = nn.remat(_Trunk, static_argnums=(3,), prevent_cse=False) if cfg.remat else _Trunk
    self.trunks = nn.scan(
      trunk,
      variable_axes={"params": 0},
      split_rngs={"params": True, "dropout": True},
      in_axes=(nn.broadcast, nn.broadcast),
      length=cfg.num_exits,
    )(cfg)
    self.last_exit = _Exit(cfg)

  def __call__(self, mixture, train=False, lengths=None):
    batch, time = mixture.shape
    carry = self.encode(mixture, train, lengths)
    mask = press_net.frame_mask(carry["lengths"], carry["features"].shape[2], self.config)
    features, _ = self.trunks(carry["features"], mask, train)
    _, outputs = self.last_exit(
      features,
      carry["basis"],
      carry["lengths"],
      models.initial_variance_state(self.config, batch, time),
      time,
    )
    return jax.tree.map(lambda x: x[None], outputs)


class UnrolledPressNet(models.PressNet):
  """PRESS-Net with a Python loop over its stages instead of `nn.scan`: one copy of the
  stage per exit in the program, the contrast for compile time."""

  def setup(self):
    super().setup()
    self.unrolled = [press_net.Stage(self.config) for _ in range(self.config.num_exits)]

  def __call__(self, mixture, train=False, lengths=None):
    batch, time = mixture.shape
    state = (
      self.encode(mixture, train, lengths),
      models.initial_variance_state(self.config, batch, time),
    )
    outputs = []
    for stage in self.unrolled:
      state, output = stage(state, time, train)
      outputs.append(output)
    return jax.tree.map(lambda *x: jnp.stack(x), *outputs)


# --------------------------------------------------------------------------- training


def _experiment_config(preset):
  return config_lib.base_config(preset=preset, dataset="wsj0-mix", data_root="unused")


def _batch(batch, samples, num_sources, seed=0):
  rng = np.random.default_rng(seed)
  return {
    "mixture": jnp.asarray(rng.normal(size=(batch, samples)), jnp.float32),
    "sources": jnp.asarray(rng.normal(size=(batch, num_sources, samples)), jnp.float32),
    "mask": jnp.ones((batch, samples), jnp.float32),
  }


def _train_step(model, batch):
  """`train.make_train_step` for `model`, compiled for `batch` and initialised: a
  function that runs one step and blocks until it is done."""
  config = _experiment_config("tiny")  # Its optimizer and loss; the model is `model`.
  optimizer = train.make_optimizer(config.optimizer, total_steps=1000)
  state = train.init_train_state(config, model, optimizer, batch["mixture"][:1])
  compiled = train.make_train_step(config, model, optimizer).lower(state, batch).compile()
  holder = [state]

  def run():
    holder[0], step_metrics = compiled(holder[0], batch)
    jax.block_until_ready(step_metrics)

  return run


def train_benchmark(config, batch, samples, repeats):
  """Every exit against the last alone, and the achieved FLOP/s of the former over those
  of a large matmul timed in the same rounds (a peak measured apart from the steps
  moved by half between runs on a shared machine)."""
  data = _batch(batch, samples, config.num_sources)
  matmul, matmul_flops = _matmul(matmul_size())
  all_exits, last_exit, matmul_s = interleaved_times(
    [_train_step(models.PressNet(config), data), _train_step(LastExitOnly(config), data), matmul],
    repeats,
  )
  flops = throughput.model_flops_per_step(config, batch, samples)
  peak_gflops = matmul_flops / matmul_s / 1e9
  return {
    "train": {
      "batch": batch,
      "segment_samples": samples,
      "remat": config.remat,
      "all_exits_step_s": all_exits,
      "last_exit_step_s": last_exit,
      "train_step_gflop": flops / 1e9,
      "achieved_gflops": flops / all_exits / 1e9,
      "peak_matmul_gflops": peak_gflops,
    },
    "train_all_exits_over_last_exit": all_exits / last_exit,
    "train_mfu": flops / all_exits / 1e9 / peak_gflops,
  }


def compile_seconds(model, batch, samples):
  """Wall time to trace, lower and compile `model`'s train step (no execution)."""
  config = _experiment_config("tiny")
  optimizer = train.make_optimizer(config.optimizer, total_steps=1000)
  mixture = jax.ShapeDtypeStruct((batch, samples), jnp.float32)
  state = jax.eval_shape(lambda m: train.init_train_state(config, model, optimizer, m), mixture)
  data = jax.eval_shape(lambda: _batch(batch, samples, model.config.num_sources))
  step = train.make_train_step(config, model, optimizer)
  start = time.perf_counter()
  step.lower(state, data).compile()
  return time.perf_counter() - start


def compile_benchmark(unrolled_exits, scan_exits=12):
  """Compile time with 2 and `scan_exits` stages of `tiny`'s stage (one block each),
  stacked with `nn.scan`, and with 2 and `unrolled_exits` unrolled."""

  def seconds(network, exits):
    config = models.preset("tiny", num_exits=exits, num_exit_blocks=exits)
    return compile_seconds(network(config), 2, SAMPLE_RATE // 4)

  scan = {exits: seconds(models.PressNet, exits) for exits in sorted({2, scan_exits})}
  unrolled = {exits: seconds(UnrolledPressNet, exits) for exits in sorted({2, unrolled_exits})}
  return {
    "compile": {"stage": "tiny (one block)", "scan_s": scan, "unrolled_s": unrolled},
    f"compile_scan_e{scan_exits}_over_e2": scan[scan_exits] / scan[2],
    f"compile_unrolled_e{unrolled_exits}_over_e2": unrolled[unrolled_exits] / unrolled[2],
  }


# --------------------------------------------------------------------------- inference


def _first_stages(variables, config, stages):
  """`config` and `variables` cut to their first `stages` stages."""
  config = dataclasses.replace(
    config, num_exits=stages, num_exit_blocks=stages * config.blocks_per_stage
  )
  params = dict(variables["params"])
  params[models.STAGES] = jax.tree.map(lambda p: p[:stages], params[models.STAGES])
  return config, {"params": params}


def stopping_benchmark(config, variables, batch, samples, repeats):
  """The stopping loop stopped at each exit, against full depth and against a network of
  that many stages compiled on its own."""
  mixture = jax.random.normal(jax.random.key(0), (batch, samples))
  exits = config.num_exits

  def stopped_at(k):
    return lambda: jax.block_until_ready(
      inference.separate(variables, config, mixture, policy="fixed", exit_index=k)
    )

  def static(k):
    config_k, variables_k = _first_stages(variables, config, k)
    forward = jax.jit(models.PressNet(config_k).apply)
    return lambda: jax.block_until_ready(forward(variables_k, mixture))

  times = interleaved_times(
    [stopped_at(k) for k in range(1, exits + 1)] + [static(k) for k in range(1, exits + 1)], repeats
  )
  loop, static_times = times[:exits], times[exits:]
  gmacs = models.gmacs_by_exit(config, samples)
  return {
    "inference": {
      "batch": batch,
      "segment_samples": samples,
      "stop_at_k_s": loop,
      "static_k_stages_s": static_times,
    },
    "stop_at_k_over_full": [t / loop[-1] for t in loop],
    "stop_at_k_compute_fraction": [g / gmacs[-1] for g in gmacs],
    "while_loop_over_static": [a / b for a, b in zip(loop, static_times)],
  }


def _compile_separate_long(variables, config, mixture, **kwargs):
  """Compiles what `separate_long(variables, config, mixture, **kwargs)` will run, by
  calling `separate` once on each shape of its chunk batches, which a dry run with a
  stand-in `separate` that only records them finds."""
  shapes = set()

  def record(variables, config, chunks, **kwargs):
    del variables, kwargs
    shapes.add(chunks.shape)
    batch, time = chunks.shape
    return inference.SeparationResult(
      estimates=np.zeros((batch, config.num_sources, time), np.float32),
      exit_index=np.ones(batch, np.int32),
      probability=np.zeros(batch, np.float32),
      gmacs=np.zeros(batch, np.float32),
    )

  with mock.patch.object(inference, "separate", record):
    inference.separate_long(variables, config, mixture, **kwargs)
  for shape in shapes:
    jax.block_until_ready(
      inference.separate(variables, config, np.zeros(shape, np.float32), **kwargs)
    )


def separation_child(preset, rtf_seconds, long_seconds, repeats):
  """Run in a fresh process (so that its peak memory is its own): `separate_long` with
  `preset` (press-4) on `rtf_seconds` (60 s) of audio at full depth and with the
  default stopping target, then on `long_seconds` at full depth. Prints the JSON of
  `separation_benchmark`'s timings, which exclude compiling (`_compile_separate_long`
  first)."""
  config = models.preset(preset)
  variables = jax.jit(models.PressNet(config).init)(
    jax.random.key(0), jnp.zeros((1, config.encoder_kernel))
  )
  rng = np.random.default_rng(0)
  short, long = (
    rng.normal(size=int(seconds * config.sample_rate)).astype(np.float32)
    for seconds in (rtf_seconds, long_seconds)
  )
  full_depth = {"policy": "fixed", "exit_index": config.num_exits}
  for mixture, kwargs in ((short, full_depth), (long, full_depth), (short, {})):
    _compile_separate_long(variables, config, mixture, **kwargs)
  full = functools.partial(inference.separate_long, variables, config, **full_depth)
  stop = functools.partial(inference.separate_long, variables, config)
  stopped = []
  results = {
    "rtf_press4_full": median_time(lambda: full(short), repeats, warmup=0) / rtf_seconds,
    "rtf_press4_stop": median_time(lambda: stopped.append(stop(short)), repeats, warmup=0)
    / rtf_seconds,
    "long_file_rtf": _elapsed(lambda: full(long)) / long_seconds,
  }
  results["rtf_press4_stop_mean_exit"] = stopped[-1].exits.mean_exit
  results["peak_rss_bytes"] = peak_rss_bytes()
  print(json.dumps(results))


def peak_rss_bytes():
  """This process's peak resident memory since it started its program.

  Linux's `VmHWM` rather than `getrusage`'s `ru_maxrss`: the latter carries over the
  peak of the process `exec` replaced, which for a child forked from this benchmark
  (gigabytes after the train steps) is the parent's.
  """
  status = pathlib.Path("/proc/self/status")
  if status.exists():
    for line in status.read_text().splitlines():
      if line.startswith("VmHWM:"):
        return int(line.split()[1]) * 1024
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # Bytes on macOS.


def separation_benchmark(long_seconds, repeats, preset="press-4", rtf_seconds=RTF_SECONDS):
  """`separation_child` in a fresh process; its peak resident memory, and the long
  file's throughput over the 60 s file's."""
  process = subprocess.run(
    [
      sys.executable,
      __file__,
      "--separation-child",
      preset,
      str(rtf_seconds),
      str(long_seconds),
      str(repeats),
    ],
    capture_output=True,
    text=True,
    check=True,
  )
  results = json.loads(process.stdout.strip().splitlines()[-1])
  peak_gb = results.pop("peak_rss_bytes") / 1e9
  return {
    "rtf_preset": preset,
    "rtf_audio_seconds": rtf_seconds,
    **results,
    "long_file_seconds": long_seconds,
    "long_file_peak_rss_gb": peak_gb,
    "long_file_throughput_over_60s": results["rtf_press4_full"] / results["long_file_rtf"],
  }


# --------------------------------------------------------------------------- report


def _targets(results):
  """Each target and whether `results` meet it."""
  checks = {}
  for name, preset in results["presets"].items():
    exits = len(preset["stop_at_k_over_full"])
    checks[f"{name}/train_all_exits_over_last_exit <= 1.15"] = (
      preset["train_all_exits_over_last_exit"] <= 1.15
    )
    checks[f"{name}/train_mfu >= 0.20"] = preset["train_mfu"] >= 0.20
    checks[f"{name}/stop_at_k_over_full <= k/E + 0.05"] = all(
      ratio <= k / exits + 0.05 for k, ratio in enumerate(preset["stop_at_k_over_full"], start=1)
    )
    # The encoder and shared trunk run whatever the exit, so exit `k` costs more than
    # `k/E` of the compute: this check is the stopping loop's own overhead.
    checks[f"{name}/stop_at_k_over_full <= compute fraction + 0.05"] = all(
      ratio <= fraction + 0.05
      for ratio, fraction in zip(
        preset["stop_at_k_over_full"], preset["stop_at_k_compute_fraction"]
      )
    )
    checks[f"{name}/while_loop_over_static <= 1.05"] = all(
      ratio <= 1.05 for ratio in preset["while_loop_over_static"]
    )
  if "compile_scan_e12_over_e2" in results:  # Not measured by `--smoke`.
    checks["compile_scan_e12_over_e2 <= 1.3"] = results["compile_scan_e12_over_e2"] <= 1.3
  checks["long_file_peak_rss_gb < 3"] = results["long_file_peak_rss_gb"] < 3
  checks["long_file_throughput_over_60s within 10%"] = (
    abs(results["long_file_throughput_over_60s"] - 1) <= 0.1
  )
  return checks


def markdown_table(results):
  """A Markdown table of the headline ratios, each with its target and whether it is met."""
  device = results["device"]
  rows = [
    f"Measured on {device['device_kind']} ({device['platform']}, "
    f"{device['cpu_count']} CPU cores, jax {device['jax_version']})"
    f"{', --smoke' if results.get('smoke') else ', --quick' if results['quick'] else ''}.",
    "",
    "| measurement | value | target | met |",
    "|---|---|---|---|",
  ]
  checks = _targets(results)

  def row(name, value, target):
    met = checks.get(f"{name} {target}")
    rows.append(
      f"| {name} | {value} | {target} | {'–' if met is None else 'yes' if met else 'no'} |"
    )

  def ratios(values):
    return " / ".join(f"{v:.2f}" for v in values)

  for name, preset in results["presets"].items():
    train = preset["train"]
    size = f"batch {train['batch']} × {train['segment_samples']} samples"
    row(
      f"{name}/train_all_exits_over_last_exit",
      f"{preset['train_all_exits_over_last_exit']:.2f} ({size})",
      "<= 1.15",
    )
    row(
      f"{name}/train_mfu",
      f"{preset['train_mfu']:.3f} ({train['achieved_gflops']:.1f} "
      f"of {train['peak_matmul_gflops']:.0f} GFLOP/s)",
      ">= 0.20",
    )
    row(f"{name}/stop_at_k_over_full", ratios(preset["stop_at_k_over_full"]), "<= k/E + 0.05")
    rows.append(
      f"| {name}/stop_at_k_compute_fraction | "
      f"{ratios(preset['stop_at_k_compute_fraction'])} | (reference) | – |"
    )
    row(
      f"{name}/stop_at_k_over_full",
      ratios(preset["stop_at_k_over_full"]),
      "<= compute fraction + 0.05",
    )
    row(f"{name}/while_loop_over_static", ratios(preset["while_loop_over_static"]), "<= 1.05")
  for key in results:
    if key.startswith("compile_scan_"):
      row(key, f"{results[key]:.2f}", "<= 1.3")
  for key in results:
    if key.startswith("compile_unrolled_"):
      row(key, f"{results[key]:.2f}", "(contrast)")
  row("rtf_press4_full", f"{results['rtf_press4_full']:.4f}", "(report)")
  row(
    "rtf_press4_stop",
    f"{results['rtf_press4_stop']:.4f} (mean exit {results['rtf_press4_stop_mean_exit']:.2f})",
    "(report)",
  )
  row(
    "long_file_peak_rss_gb",
    f"{results['long_file_peak_rss_gb']:.2f} ({results['long_file_seconds']:.0f} s file)",
    "< 3",
  )
  row(
    "long_file_throughput_over_60s", f"{results['long_file_throughput_over_60s']:.2f}", "within 10%"
  )
  return "\n".join(rows) + "\n"


def _log(message, start):
  print(f"[{time.perf_counter() - start:6.0f} s] {message}", file=sys.stderr, flush=True)


def run(quick, remat=False, smoke=False):
  """Every measurement; the JSON-ready results."""
  start = time.perf_counter()
  repeats = 1 if smoke else 3 if quick else 5
  peak = peak_matmul_gflops(256 if smoke else matmul_size())
  results = {
    "device": device_info(),
    "quick": quick,
    "smoke": smoke,
    "peak_matmul_gflops": peak,
    "presets": {},
  }
  _log(f"peak float32 matmul: {peak:.0f} GFLOP/s", start)
  train_sizes = SMOKE_SIZES if smoke else QUICK_TRAIN_SIZES if quick else TRAIN_SIZES
  inference_sizes = SMOKE_SIZES if smoke else QUICK_INFERENCE_SIZES if quick else INFERENCE_SIZES
  for name in train_sizes:
    config = models.preset(name, remat=remat, **(SMOKE_OVERRIDES if smoke else {}))
    batch, seconds = train_sizes[name]
    preset_results = train_benchmark(config, batch, int(seconds * SAMPLE_RATE), repeats)
    _log(
      f"{name}: train steps, all exits over the last alone "
      f"{preset_results['train_all_exits_over_last_exit']:.2f}",
      start,
    )
    variables = jax.jit(models.PressNet(config).init)(
      jax.random.key(0), jnp.zeros((1, config.encoder_kernel))
    )
    batch, seconds = inference_sizes[name]
    # Calls of tens of milliseconds: more repeats, or the machine's noise decides.
    preset_results.update(
      stopping_benchmark(
        config, variables, batch, int(seconds * SAMPLE_RATE), repeats if smoke else repeats + 6
      )
    )
    _log(f"{name}: stopping loop", start)
    results["presets"][name] = preset_results
  if smoke:
    results.update(compile_benchmark(unrolled_exits=2, scan_exits=3))
  else:
    results.update(compile_benchmark(unrolled_exits=4 if quick else 12))
  _log("compile times", start)
  if smoke:
    results.update(separation_benchmark(2.0, 1, preset="tiny", rtf_seconds=1.0))
  else:
    results.update(separation_benchmark(120.0 if quick else 600.0, 1 if quick else 3))
  _log("separate on 60 s and on the long file", start)
  results["targets"] = _targets(results)
  results["benchmark_seconds"] = time.perf_counter() - start
  return results


def main(argv=None):
  parser = argparse.ArgumentParser(
    description="\n\n".join(__doc__.split("\n\n")[:2]),
    formatter_class=argparse.RawDescriptionHelpFormatter,
    epilog="example: python experiments/benchmarks/run.py --quick "
    "--out experiments/benchmarks/results/cpu_quick.json",
  )
  parser.add_argument(
    "--quick",
    action="store_true",
    help="smaller sizes and fewer repeats: under 10 minutes on 2 CPU cores",
  )
  parser.add_argument(
    "--smoke",
    action="store_true",
    help="`tiny` alone at tiny sizes, one repeat: checks that it runs",
  )
  parser.add_argument("--out", type=pathlib.Path, help="where to write the JSON results")
  parser.add_argument(
    "--remat",
    action="store_true",
    help="recompute each stage in the backward pass (`PressNetConfig.remat`)",
  )
  parser.add_argument(
    "--table",
    type=pathlib.Path,
    metavar="RESULTS_JSON",
    help="print the Markdown table of an earlier run's results and exit",
  )
  parser.add_argument("--separation-child", nargs=4, help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.separation_child:
    preset, rtf_seconds, long_seconds, repeats = args.separation_child
    separation_child(preset, float(rtf_seconds), float(long_seconds), int(repeats))
    return
  if args.table:
    print(markdown_table(json.loads(args.table.read_text())), end="")
    return
  if args.out is None:
    parser.error("--out is required")
  # Compile times must be measured, not read back from a persistent cache.
  jax.config.update("jax_enable_compilation_cache", False)
  results = run(args.quick, remat=args.remat, smoke=args.smoke)
  args.out.parent.mkdir(parents=True, exist_ok=True)
  args.out.write_text(json.dumps(results, indent=2) + "\n")
  print(markdown_table(results), end="")
  print(f"Results: {args.out}")


if __name__ == "__main__":
  main()
