"""A workdir's files on a local disk or in an object store (`gs://BUCKET/PATH`), read
and written through `etils.epath` (gcsfs for `gs://`).

Object stores write whole objects: they cannot append to one. A log that grows during
a run (`LineLog`) therefore appends on a local disk, and in a bucket rewrites its whole
object on every append. Training appends once every `log_every` steps, a few hundred
bytes each, so a 200k-step run's rewrites total well under a gigabyte.
"""

import os

from etils import epath
from etils.epath import backend

from eesep_jax import files


def forget_listings(path):
  """Makes this process list `path` afresh from the bucket. gcsfs remembers every
  folder it listed, for the process's life: when another process (the lead of a
  multi-host run) has since removed or added files there, the remembered listing names
  files that are gone. Nothing for a local path."""
  if files.is_object_store(path):
    backend.fsspec_backend.fs(os.fspath(path)).invalidate_cache()


class LineLog:
  """A text file that grows by whole lines, kept across restarts: what was there is
  kept and appended to."""

  def __init__(self, path):
    self.path = epath.Path(path)
    if files.is_object_store(self.path):
      self._lines = self.path.read_text() if self.path.exists() else ""
      self._file = None
    else:
      self._file = self.path.open("a")

  def append(self, line):
    """Appends `line` (and a newline), durably: a process killed later keeps it."""
    if self._file is None:
      self._lines += line + "\n"
      self.path.write_text(self._lines)
    else:
      self._file.write(line + "\n")
      self._file.flush()

  def close(self):
    if self._file is not None:
      self._file.close()
