"""When to stop for a preemption: one step, the same on every process of a run.

A preempted host gets SIGTERM. In a multi-process run (`jax.distributed.initialize`),
JAX's runtime installs its own SIGTERM notifier: a notice on any process reaches every
other through the coordination service, which picks the next step that none of them
has reached (`jax.experimental.multihost_utils.reached_preemption_sync_point`). Every
process then saves the same checkpoint at that step and leaves, and none waits alone in
a collective for a peer that has gone. A Python SIGTERM handler would replace the
runtime's notifier, so none is installed there. A single process that did not join a
job has no coordination service: a Python handler sets a flag, read at the next step.
"""

import signal
import threading

import jax
from jax.experimental import multihost_utils


def enable_coordination():
  """Turns on JAX's preemption service (on by default) before
  `jax.distributed.initialize`, which starts it: the `Preemption` of a multi-process
  run depends on it."""
  jax.config.update("jax_enable_preemption_service", True)


class Preemption:
  """Whether the training loop should save and stop at a step, because this process or
  (in a multi-process run) any process of the run was sent SIGTERM.

  `reached(step)` must be called at every step, with increasing steps, on every
  process. `step` is then the step it answered True for, None before.
  """

  def __init__(self):
    self.step = None
    self._coordinated = jax.distributed.is_initialized()
    self._requested = False
    # Signal handlers can only be installed from the main thread; elsewhere (a
    # notebook's worker thread) a single process is not stopped by SIGTERM.
    self._installed = (
      not self._coordinated and threading.current_thread() is threading.main_thread()
    )
    if self._installed:
      self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    del signum, frame
    self._requested = True

  def reached(self, step):
    """True when the loop should save at `step` and stop."""
    if self._coordinated:
      stop = multihost_utils.reached_preemption_sync_point(step)
    else:
      stop = self._requested
    if stop and self.step is None:
      self.step = step
    return stop

  def close(self):
    """Gives SIGTERM back to the handler it had before."""
    if self._installed:
      signal.signal(signal.SIGTERM, self._previous)
      self._installed = False
