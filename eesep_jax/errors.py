"""The errors a user can act on, and the one line the `eesep` commands print for each.

    error: <path or flag>: <what is wrong>

Exit code 2 is a usage error (`UsageError`: a flag, a config field or a path given
that asks for something impossible); exit code 1 is a data error (`DataError`: a
corpus, an audio file, a checkpoint or a config file that is missing, damaged or
holds unusable samples, or an output that cannot be written). `EESEP_DEBUG=1` or
`--debug` prints the traceback above the line. Ctrl-C ends a command with the line
`interrupted` and exit code 130 (`report_interrupt`).

Anything else is a bug, and keeps its traceback.
"""

import os
import sys
import traceback

USAGE_EXIT_CODE = 2
DATA_EXIT_CODE = 1
# What shells give a command that SIGINT (Ctrl-C) ended: 128 + the signal's number.
INTERRUPT_EXIT_CODE = 130
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


def report_interrupt(interrupt, debug=False, file=None):
  """Prints the line for a Ctrl-C (its traceback first when `debugging(debug)`);
  returns `INTERRUPT_EXIT_CODE`."""
  file = file or sys.stderr
  if debugging(debug):
    traceback.print_exception(interrupt, file=file)
  print("interrupted (Ctrl-C)", file=file)
  return INTERRUPT_EXIT_CODE
