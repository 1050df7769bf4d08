"""Writing files whole or not at all, so that a crash, a full disk or Ctrl-C leaves the
previous file, or none, never half of one.

On a disk each file is written under a temporary name next to it, then renamed onto
its own name (atomic within a file system). In an object store (`gs://BUCKET/PATH`,
through `etils.epath`) an object is replaced whole or not at all when its upload
ends, and there is no rename (only copy and delete): files are written directly.
Audio outputs, which must also never replace another run's file, have their own
no-replace placing (`data.audio.place`).
"""

import contextlib
import os

from etils import epath

PARTIAL_MARK = ".partial"


def is_object_store(path):
  """Whether `path` is a URL such as `gs://BUCKET/PATH` rather than a local path."""
  return "://" in str(path)


def partial_path(path):
  """The temporary name `path` is written under: in its folder, hidden, this process's,
  and with `path`'s extension (`np.savez` adds `.npz` to a name without it, matplotlib
  picks the image format by it): `dir/.name.<pid>.partial.ext`."""
  path = epath.Path(path)
  return path.parent / f".{path.stem}.{os.getpid()}{PARTIAL_MARK}{path.suffix}"


@contextlib.contextmanager
def atomic_writes(paths):
  """Yields a temporary path (`partial_path`) for each of `paths` (a dict, by the same
  keys), to be written in the block; when the block ends, each is renamed onto its
  path, replacing what is there. When the block raises (Ctrl-C included), every
  temporary file is removed and no path is touched. (In an object store, the paths
  themselves: each object is replaced whole as it is written.)

  Example:
    with atomic_writes({"json": out / "report.json"}) as partials:
      partials["json"].write_text(text)
  """
  paths = {key: epath.Path(path) for key, path in paths.items()}
  if any(map(is_object_store, paths.values())):
    yield paths
    return
  partials = {key: partial_path(path) for key, path in paths.items()}
  try:
    yield partials
    for key, partial in partials.items():
      partial.replace(paths[key])
  finally:
    for partial in partials.values():
      if partial.exists():
        partial.unlink()


def write_text(path, text):
  """Writes `text` to `path` by way of `atomic_writes`."""
  with atomic_writes({"text": path}) as partials:
    partials["text"].write_text(text)
