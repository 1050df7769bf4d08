"""The errors a user can act on, and the one line the `eesep` commands print for each.

    error: <path or flag>: <what is wrong>

Exit code 2 is a usage error (`UsageError`: a flag, a config field or a path given
that asks for something impossible); exit code 1 is a data error (`DataError`: a
corpus, an audio file, a checkpoint or a config file that is missing, damaged or
holds unusable samples, or an output that cannot be written). `EESEP_DEBUG=1` or
`--debug` prints the traceback above the line. Ctrl-C ends a command with the line
`interrupted` and exit code 130 (`report_interrupt`). A preemption (SIGTERM) that
stops training before the work a command goes on to do ends it with exit code 143
(`Preempted`).

Anything else is a bug, and keeps its traceback.
"""

import os
import sys
import traceback

USAGE_EXIT_CODE = 2
DATA_EXIT_CODE = 1
# What shells give a command that SIGINT (Ctrl-C) ended: 128 + the signal's number.
INTERRUPT_EXIT_CODE = 130
# And one that SIGTERM (a preemption) ended before its work was done.
PREEMPTED_EXIT_CODE = 143
DEBUG_VARIABLE = "EESEP_DEBUG"


class UsageError(ValueError):
  """A flag, config field or given path asks for something impossible: exit code 2.

  Attributes:
    subject: the flag (`--confidence 1.5`), config field (`config.steps`) or path.
    problem: what is wrong with it, and where it helps, what to do instead.
  """

  def __init__(self, subject, problem):
    self.subject = str(subject)
    self.problem = problem
    super().__init__(f"{subject}: {problem}")


class DataError(ValueError):
  """Data that cannot be used: a corpus, file or checkpoint missing, damaged or holding
  unusable samples. Its message starts with the path (or the dataset) at fault."""


class Preempted(Exception):
  """Training saved the step at which a preemption (SIGTERM) stopped it, and returned
  before its last step. `eesep train` ends with exit code 0 on it, so that launching it
  again resumes; a command that goes on to use the trained run (the demo, an ablation)
  ends with `PREEMPTED_EXIT_CODE` instead of using a half-trained one.

  Attributes:
    workdir: the run's folder.
    step: the step saved.
  """

  def __init__(self, workdir, step):
    self.workdir = workdir
    self.step = step
    super().__init__(
      f"{workdir}: preempted (SIGTERM) at step {step}, which is saved; run the same "
      "command again to resume"
    )


REPORTED = (UsageError, DataError, OSError)


def exit_code(error):
  """The exit code for one of the `REPORTED` errors."""
  return USAGE_EXIT_CODE if isinstance(error, UsageError) else DATA_EXIT_CODE


def message(error):
  """`error: <path or flag>: <what is wrong>` for one of the `REPORTED` errors.

  A dataset error that lists several files keeps one line per file below the first.
  """
  if isinstance(error, OSError) and error.filename is not None:
    text = f"{error.filename}: {error.strerror or error}"
  else:
    text = str(error)
  return f"error: {text}"


def debugging(flag=False):
  """Whether tracebacks are shown: `--debug` (`flag`) or `EESEP_DEBUG` set and not 0."""
  return flag or os.environ.get(DEBUG_VARIABLE, "0") not in ("", "0")


def report(error, debug=False, file=None):
  """Prints `error`'s line (its traceback first when `debugging(debug)`); returns its
  exit code."""
  file = file or sys.stderr
  if debugging(debug):
    traceback.print_exception(error, file=file)
  print(message(error), file=file)
  return exit_code(error)


def report_preempted(preempted, file=None):
  """Prints `preempted`'s line; returns `PREEMPTED_EXIT_CODE`."""
  print(f"stopped: {preempted}", file=file or sys.stderr)
  return PREEMPTED_EXIT_CODE


def report_interrupt(interrupt, debug=False, file=None):
  """Prints the line for a Ctrl-C (its traceback first when `debugging(debug)`);
  returns `INTERRUPT_EXIT_CODE`."""
  file = file or sys.stderr
  if debugging(debug):
    traceback.print_exception(interrupt, file=file)
  print("interrupted (Ctrl-C)", file=file)
  return INTERRUPT_EXIT_CODE
