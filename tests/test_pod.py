"""A pod in a box: `eesep train` as `experiments/tpu/launch.py` starts it on a 4-host TPU
slice (`v4-32`), run here as 4 processes of 2 CPU devices each, joined over loopback, in
a `gs://` workdir on a local GCS emulator.

The command is the one `launch.py --dry-run` prints; only the coordinator, which a TPU
pod discovers by itself, is given explicitly. The run is preempted twice, SIGTERM
reaching every process at different moments and then one process only, and resumed to
its end; its losses must be the uninterrupted run's, step for step. `eesep evaluate`,
`calibrate` and `separate` then read the trained run from the bucket.
"""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import numpy as np
import pytest

from conftest import REPO
from conftest import train_env
from conftest import TRAIN_OVERRIDES
import test_tpu_launch

PROCESSES = 4  # The hosts of a v4-32 slice.
DEVICES_PER_PROCESS = 2
STEPS = 10
BUCKET = "eesep-pod"
# How long every process has, from the last SIGTERM, to save and exit: the stop step is
# at most a step away, then one checkpoint is written.
EXIT_SECONDS = 60

# Four launches of four processes: minutes on a busy 2-core machine. Opt-in for now:
# under 4 concurrent writers the emulator now and then answers a tensorstore write with
# what it reports as "Malformed StorageGeneration" (a checkpoint save then fails on one
# process and the others wait for it), and the whole module takes 8-10 min on a loaded
# 2-core machine, over the suite's budget. EESEP_POD_TEST=1 runs it.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200),
              pytest.mark.skipif(not os.environ.get("EESEP_POD_TEST"),
                                 reason="opt-in (EESEP_POD_TEST=1): flaky GCS emulator, slow")]


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _wait_for_port(port, process, timeout=30):
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    assert process.poll() is None, "the GCS emulator exited"
    try:
      socket.create_connection(("127.0.0.1", port), timeout=1).close()
      return
    except OSError:
      time.sleep(0.1)
  raise TimeoutError(f"the GCS emulator did not listen on {port} in {timeout} s")


class Bucket:
  """The emulator's bucket, read over its JSON API (not through the package's own
  gs:// code, which is what is tested)."""

  def __init__(self, url):
    self.url = url

  def names(self, prefix):
    names, token = [], None
    while True:
      query = {"prefix": prefix, **({"pageToken": token} if token else {})}
      with urllib.request.urlopen(f"{self.url}/storage/v1/b/{BUCKET}/o?"
                                  f"{urllib.parse.urlencode(query)}") as response:
        listing = json.load(response)
      names += [item["name"] for item in listing.get("items", [])]
      token = listing.get("nextPageToken")
      if not token:
        return names

  def read(self, name):
    quoted = urllib.parse.quote(name, safe="")
    try:
      with urllib.request.urlopen(
          f"{self.url}/storage/v1/b/{BUCKET}/o/{quoted}?alt=media") as response:
        return response.read()
    except urllib.error.HTTPError as error:
      if error.code == 404:
        return None
      raise

  def metrics(self, run):
    text = self.read(f"{run}/metrics.jsonl")
    return [json.loads(line) for line in text.decode().splitlines()] if text else []

  def losses(self, run):
    """`[(step, train_loss)]` in the order they were logged."""
    return [(r["step"], r["train_loss"]) for r in self.metrics(run) if "train_loss" in r]

  def checkpoint_steps(self, run):
    """Steps of the finished checkpoints (orbax writes `commit_success.txt` last on GCS)."""
    return sorted({int(name.split("/")[2]) for name in self.names(f"{run}/checkpoints/")
                   if name.endswith("/commit_success.txt") and name.count("/") == 3})


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
  """`(environment, Bucket)`: a GCS emulator on 127.0.0.1 holding an empty bucket, and
  the variables that point gcsfs, google-cloud-storage and tensorstore at it."""
  port = _free_port()
  log = tmp_path_factory.mktemp("gcs") / "emulator.log"
  with open(log, "w") as out:
    emulator = subprocess.Popen(
        [sys.executable, "-m", "gcp_storage_emulator", "start", "--host", "127.0.0.1",
         "--port", str(port), "--in-memory", f"--default-bucket={BUCKET}", "--quiet"],
        stdout=out, stderr=subprocess.STDOUT)
  try:
    _wait_for_port(port, emulator)
    url = f"http://127.0.0.1:{port}"
    env = {"STORAGE_EMULATOR_HOST": url, "TENSORSTORE_GCS_HTTP_URL": url,
           # gcsfs's default file system asks the bucket's layout of a control-plane API
           # the emulator lacks; the plain one is what the emulator serves.
           "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
           "GOOGLE_CLOUD_PROJECT": "test"}
    yield env, Bucket(url)
  finally:
    emulator.terminate()
    emulator.wait(timeout=30)


def _launcher_command(run, corpus):
  """The `eesep train` argv that `launch.py --dry-run` starts on every worker of a v4-32
  slice, run with this Python."""
  returncode, commands, stderr = test_tpu_launch._dry_run(
      "--name", "pod", "--zone", "us-central2-b", "--accelerator-type", "v4-32",
      "--config", "eesep_jax/configs/demo.py", "--workdir", f"gs://{BUCKET}/{run}",
      *(f"--override={flag.removeprefix('--config.')}" for flag in TRAIN_OVERRIDES),
      f"--override=data.root={corpus}", f"--override=steps={STEPS}",
      "--override=checkpoint_every=1000", "--run-id", "POD")
  assert returncode == 0, stderr
  (start,) = [c for c in commands if "nohup" in (test_tpu_launch._flag(c, "command") or "")]
  argv = test_tpu_launch._train_argv(test_tpu_launch._flag(start, "command"))
  assert argv[:2] == ["$HOME/eesep_venv/bin/eesep", "train"] and "--distributed" in argv
  return [sys.executable, "-m", "eesep_jax.app.cli", *argv[1:]]


class Pod:
  """The processes of one launch: the launcher's command, each with its coordinates."""

  def __init__(self, argv, env, logs):
    coordinator = f"127.0.0.1:{_free_port()}"
    self.logs = [logs / f"process{index}.log" for index in range(PROCESSES)]
    self.processes = []
    for index, log in enumerate(self.logs):
      with open(log, "w") as out:
        self.processes.append(subprocess.Popen(
            [*argv, "--coordinator", coordinator, "--num-processes", str(PROCESSES),
             "--process-id", str(index)],
            cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT))

  def wait_for_step(self, bucket, run, step, timeout=300):
    """Blocks until the run has logged `step` (every process is then training)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
      for process, log in zip(self.processes, self.logs):
        assert process.poll() is None, log.read_text()[-4000:]
      if any(s >= step for s, _ in bucket.losses(run)):
        return
      time.sleep(0.2)
    raise TimeoutError(f"no step {step} in gs://{BUCKET}/{run} after {timeout} s")

  def wait(self, timeout):
    """Every process's exit status; kills all and fails when one is still running."""
    deadline = time.monotonic() + timeout
    try:
      return [p.wait(timeout=max(deadline - time.monotonic(), 0.1)) for p in self.processes]
    except subprocess.TimeoutExpired:
      for process in self.processes:
        process.kill()
      pytest.fail(f"still running {timeout} s after SIGTERM:\n" + "\n".join(
          log.read_text()[-2000:] for log in self.logs))
    finally:
      for process in self.processes:
        process.kill()
        process.wait()

  def stop_steps(self):
    """The step each process says it stopped at (`preempted: saving step N`)."""
    steps = []
    for log in self.logs:
      found = [int(line.rsplit("saving step ", 1)[1].split()[0])
               for line in log.read_text().splitlines() if "preempted: saving step" in line]
      steps.append(found)
    return steps


@pytest.fixture(scope="module")
def pod_runs(gcs, tiny_corpus, compile_cache, tmp_path_factory):
  """The bucket run `preempted`, stopped twice and resumed to its end, and `reference`,
  uninterrupted; with what each launch left: exit statuses, seconds from the last
  SIGTERM to the last exit, stop steps and checkpoints."""
  env_vars, bucket = gcs
  env = {**train_env(compile_cache, devices=DEVICES_PER_PROCESS), **env_vars}
  logs = tmp_path_factory.mktemp("pod")
  argv = {run: _launcher_command(run, tiny_corpus) for run in ("preempted", "reference")}
  launches = {}

  def launch(name, run, signal_to, after_step):
    folder = logs / name
    folder.mkdir()
    began = time.monotonic()
    pod = Pod(argv[run], env, folder)
    pod.wait_for_step(bucket, run, after_step)
    for index in signal_to:  # SIGTERM at different moments, in the order given.
      pod.processes[index].terminate()
      time.sleep(0.4)
    signalled = time.monotonic()
    statuses = pod.wait(EXIT_SECONDS if signal_to else 600)
    launches[name] = {"statuses": statuses, "exit_seconds": time.monotonic() - signalled,
                      "seconds": time.monotonic() - began,
                      "stop_steps": pod.stop_steps(),
                      "checkpoints": bucket.checkpoint_steps(run),
                      "losses": bucket.losses(run), "logs": pod.logs}

  launch("every_process", "preempted", signal_to=[2, 0, 3, 1], after_step=2)
  first_stop = launches["every_process"]["checkpoints"][-1]
  launch("one_process", "preempted", signal_to=[3], after_step=first_stop + 2)
  launch("resumed", "preempted", signal_to=[], after_step=0)
  launch("reference", "reference", signal_to=[], after_step=0)
  return launches


def _assert_one_consistent_stop(launch, earlier_checkpoints=()):
  for status, log in zip(launch["statuses"], launch["logs"]):
    assert status == 0, log.read_text()[-4000:]
  assert launch["exit_seconds"] < EXIT_SECONDS
  stops = launch["stop_steps"]
  assert all(len(found) == 1 for found in stops), stops  # Each process stopped once...
  (stop,) = {found[0] for found in stops}  # ... at the same step.
  assert stop < STEPS
  # That step's checkpoint is the one the launch added, and its last logged step.
  assert launch["checkpoints"] == sorted([*earlier_checkpoints, stop])
  assert launch["losses"][-1][0] == stop
  return stop


def test_sigterm_to_every_process_stops_all_at_one_checkpoint(pod_runs):
  _assert_one_consistent_stop(pod_runs["every_process"])


def test_sigterm_to_one_process_stops_all_at_one_checkpoint(pod_runs):
  first = pod_runs["every_process"]["checkpoints"]
  second = _assert_one_consistent_stop(pod_runs["one_process"], first)
  assert second > first[-1]


def test_resumed_run_has_the_uninterrupted_losses_step_for_step(pod_runs):
  resumed, reference = pod_runs["resumed"], pod_runs["reference"]
  for launch in (resumed, reference):
    assert launch["statuses"] == [0] * PROCESSES
    assert launch["stop_steps"] == [[]] * PROCESSES
  steps = [step for step, _ in resumed["losses"]]
  assert steps == list(range(1, STEPS + 1))  # Each step once: no gap, no repeat.
  assert [step for step, _ in reference["losses"]] == steps
  # Bit for bit, as a resumed single-process run is.
  assert [loss for _, loss in resumed["losses"]] == [loss for _, loss in reference["losses"]]


def test_evaluate_calibrate_and_separate_read_the_run_from_the_bucket(
    pod_runs, gcs, tiny_corpus, tmp_path, monkeypatch, capsys):
  env_vars, bucket = gcs
  for name, value in env_vars.items():
    monkeypatch.setenv(name, value)
  from eesep_jax.analysis import calibration
  from eesep_jax.analysis import evaluate
  from eesep_jax.app import cli

  run = f"gs://{BUCKET}/preempted"
  assert cli.main(["evaluate", "--checkpoint", run, "--out", str(tmp_path / "evaluation"),
                   "--max-utterances", "2"]) is None
  summary = json.loads((tmp_path / "evaluation" / evaluate.JSON_FILE).read_text())
  assert summary["checkpoint"] == run and summary["num_utterances"] == 2

  cli.main(["calibrate", "--checkpoint", run, "--out", str(tmp_path / "calibration"),
            "--max-utterances", "2", "--targets", "0.5,5", "--confidences", "0.3,0.9",
            "--target-snr", "2", "--delta", "0.5", "--epsilon", "0.5"])
  saved = json.loads(bucket.read(f"preempted/{calibration.POSTHOC_FILE}"))
  report = json.loads((tmp_path / "calibration" / "calibration.json").read_text())
  np.testing.assert_allclose(saved["beta_scale"], report["posthoc"]["scales"]["beta_scale"])
  capsys.readouterr()

  mixture = next((tiny_corpus / "tt" / "mix").glob("*.wav"))
  assert cli.main(["separate", str(mixture), "--checkpoint", run,
                   "--out-dir", str(tmp_path / "separated")]) == 0
  stderr = capsys.readouterr().err
  assert f"applying post-hoc calibration from {run}/{calibration.POSTHOC_FILE}" in stderr
  assert sorted(p.name for p in (tmp_path / "separated").iterdir()) == [
      f"{mixture.stem}_s1.wav", f"{mixture.stem}_s2.wav"]
