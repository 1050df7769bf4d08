"""`python tests/gcs_emulator.py --port PORT --bucket NAME`: the tests' local GCS, the
`gcp-storage-emulator` server in memory, holding one empty bucket, with the two parts of
GCS's object generations that tensorstore relies on and the emulator lacks. Test
scaffolding only: the package talks to it as it talks to GCS.

- Downloads carry the object's generation in `x-goog-generation`, as GCS sends it.
  Without it tensorstore reads generation 0, which its GCS driver refuses as the
  condition of its next write of that object ("Malformed StorageGeneration"): an OCDBT
  checkpoint's manifest is read, then written on that condition.
- `ifGenerationMatch` and `ifGenerationNotMatch` are honoured on reads, deletes and
  uploads that name their object in the URL, as tensorstore's do (412 and 304, as GCS
  answers), so a conditional write made on a stale read fails instead of overwriting.

The server answers one request at a time, so a condition's check and its write are
atomic.
"""

import argparse
from http import HTTPStatus

from gcp_storage_emulator import server
from gcp_storage_emulator.exceptions import NotFound
from gcp_storage_emulator.handlers import objects


def _object_name(request):
  params = request.params or {}
  return params.get("object_id") or (request.query.get("name") or [None])[0]


def _generation(request, storage):
  """The object's generation; "0" when it does not exist (GCS's convention)."""
  try:
    return storage.get_file_obj(request.params["bucket_name"], _object_name(request))["generation"]
  except NotFound:
    return "0"


def _with_generations(handler):
  def conditional(request, response, storage, *args, **kwargs):
    match = request.query.get("ifGenerationMatch")
    not_match = request.query.get("ifGenerationNotMatch")
    if (match or not_match) and _object_name(request):
      generation = _generation(request, storage)
      if match and match[0] != generation:
        response.status = HTTPStatus.PRECONDITION_FAILED
        return None
      if not_match and not_match[0] == generation:
        response.status = HTTPStatus.NOT_MODIFIED
        return None
    result = handler(request, response, storage, *args, **kwargs)
    if request.method == "GET" and response.status in (HTTPStatus.OK, HTTPStatus.PARTIAL_CONTENT):
      object_ = storage.get_file_obj(request.params["bucket_name"], _object_name(request))
      response["x-goog-generation"] = object_["generation"]
      response["x-goog-metageneration"] = object_["metageneration"]
    return result

  return conditional


def patch_handlers():
  """Routes object reads, uploads and deletes through `_with_generations`."""
  wrapped = {
    handler: _with_generations(handler)
    for handler in (objects.get, objects.download, objects.insert, objects.delete)
  }
  for _, handlers in server.HANDLERS:
    for method, handler in handlers.items():
      if handler in wrapped:
        handlers[method] = wrapped[handler]


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--port", type=int, required=True)
  parser.add_argument("--bucket", required=True)
  args = parser.parse_args()
  patch_handlers()
  server.create_server("127.0.0.1", args.port, in_memory=True, default_bucket=args.bucket).run()


if __name__ == "__main__":
  main()
