"""What a long run logs about its speed, and the machinery that makes it faster to restart.

`Throughput` turns the loop's logged steps into steps/s, seconds of audio per second,
the learning rate and an MFU estimate; `use_compilation_cache` turns on JAX's
persistent compilation cache; `Profile` writes a `jax.profiler` trace of a step range;
`DevicePrefetch` puts batches on the devices ahead of the step that takes them.
"""

import collections
import json
import os
import pathlib
import time

import jax

from eesep_jax import errors
from eesep_jax import hardware
from eesep_jax import models

# Local even when the workdir is a bucket, and kept across restarts of the machine's
# processes (not under /tmp): a resumed run compiles from it in seconds.
DEFAULT_CACHE_DIR = (
  pathlib.Path(os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache")
  / "eesep_jax"
  / "jax"
)
PROFILE_DIR = "profile"


def use_compilation_cache(setting):
  """Turns on JAX's persistent compilation cache in `setting` (a directory, local or
  `gs://`); when it is "", in the one JAX was given (`JAX_COMPILATION_CACHE_DIR`), else
  `DEFAULT_CACHE_DIR`; nothing when it is "none". Returns the directory, or None.
  JAX keeps programs that took over a second to compile
  (`JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS`): the train step and validation."""
  if setting == "none":
    return None
  directory = setting or jax.config.jax_compilation_cache_dir or str(DEFAULT_CACHE_DIR)
  jax.config.update("jax_compilation_cache_dir", directory)
  return directory


def model_flops_per_step(model_config, batch_size, segment_samples):
  """Model FLOPs of one train step, as MFU is conventionally defined: the forward pass
  to the last exit (`models.gmacs_by_exit`, XLA's cost analysis of the encoder part and
  of one stage), and the backward pass as twice the forward. The compiled step's own
  cost analysis would count the loop over stages once (XLA counts a loop body once),
  and it includes the recomputation of rematerialised blocks, which is not the model's."""
  return 3 * batch_size * 2e9 * models.gmacs_by_exit(model_config, segment_samples)[-1]


class Throughput:
  """The speed scalars of each logged step: `steps_per_second`, `audio_seconds_per_second`
  (the global batch's), `learning_rate` and, where the devices' peak is known, `mfu`.

  Rates are over the steps since the previous log, less the time `exclude` is told of
  (validation); the first logged step has none (its interval includes compilation).

  Args:
    schedule: the optimizer's learning rate as a function of the update count.
    batch_size: the global batch.
    segment_seconds: seconds of audio per example.
    model_config: the model's `PressNetConfig`, for its FLOPs.
    peak_flops: one device's peak FLOP/s; 0: `hardware.peak_flops` of the first device.
    devices: the devices the step runs on (default: all).
  """

  def __init__(
    self, *, schedule, batch_size, segment_seconds, model_config, peak_flops=0.0, devices=None
  ):
    devices = devices or jax.devices()
    self._schedule = schedule
    self._batch_size, self._segment_seconds = batch_size, segment_seconds
    peak = peak_flops or hardware.peak_flops(devices[0], model_config.dtype)
    self.peak_flops = peak * len(devices) if peak else None
    self.step_flops = (
      model_flops_per_step(
        model_config, batch_size, round(segment_seconds * model_config.sample_rate)
      )
      if self.peak_flops
      else None
    )
    self._last = None  # (step, time) of the previous log.
    self._excluded = 0.0

  def exclude(self, seconds):
    """Leaves `seconds` (spent on something else than training) out of the next rate."""
    self._excluded += seconds

  def record(self, step):
    """The speed scalars at logged `step` (after its metrics were fetched, so that the
    device has finished it)."""
    now = time.monotonic()
    scalars = {"learning_rate": float(self._schedule(step - 1))}
    if self._last is not None:
      steps_per_second = (step - self._last[0]) / max(now - self._last[1] - self._excluded, 1e-9)
      scalars["steps_per_second"] = steps_per_second
      scalars["audio_seconds_per_second"] = (
        steps_per_second * self._batch_size * self._segment_seconds
      )
      if self.peak_flops:
        scalars["mfu"] = steps_per_second * self.step_flops / self.peak_flops
    self._last, self._excluded = (step, now), 0.0
    return scalars


def parse_profile_steps(text):
  """`"A:B"` -> `(A, B)`, the first and last step to trace; `errors.UsageError` naming
  `--profile-steps` for anything else."""
  first, colon, last = str(text).partition(":")
  try:
    first, last = int(first), int(last)
  except ValueError:
    first = None
  if not colon or first is None or not 1 <= first <= last:
    raise errors.UsageError(
      f"--profile-steps {text}",
      "must be A:B, the first and last step to trace, with 1 <= A <= B (e.g. 10:15)",
    )
  return first, last


class Profile:
  """A `jax.profiler` trace of steps `first..last` into `workdir/profile/` (TensorBoard's
  profile plugin and Perfetto read it); nothing when `steps` is None."""

  def __init__(self, workdir, steps):
    self._steps = steps
    self._directory = str(workdir / PROFILE_DIR)
    self._running = False

  def before(self, step):
    if self._steps and step == self._steps[0]:
      jax.profiler.start_trace(self._directory)
      self._running = True

  def after(self, step, outputs):
    if self._running and step == self._steps[1]:
      jax.block_until_ready(outputs)
      self.stop()

  def stop(self):
    if self._running:
      jax.profiler.stop_trace()
      self._running = False


class DevicePrefetch:
  """Batches of `iterator`, put on the devices by `to_device`, `size` steps ahead of
  the one that takes them, so that the host's transfer overlaps the step.

  `get_state()` is `iterator`'s position after the last batch taken (not after those
  prefetched), what a checkpoint must save for a resume to take the next batch, as the
  JSON that `grain.checkpoint.CheckpointSave` writes for `iterator` itself (restore
  into `iterator`, before prefetching).
  """

  def __init__(self, iterator, to_device, size=2):
    self._iterator, self._to_device, self._size = iterator, to_device, size
    self._queue = collections.deque()
    self._state = iterator.get_state()

  def __iter__(self):
    return self

  def __next__(self):
    while len(self._queue) < self._size:
      batch = self._to_device(next(self._iterator))
      self._queue.append((batch, self._iterator.get_state()))
    batch, self._state = self._queue.popleft()
    return batch

  def get_state(self):
    return (
      self._state if isinstance(self._state, bytes) else json.dumps(self._state, indent=4).encode()
    )
