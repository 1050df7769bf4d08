"""A pod in a box: `eesep train` as `experiments/tpu/launch.py` starts it on a 4-host TPU
slice (`v4-32`), run here as 4 processes of 2 CPU devices each, joined over loopback, in
a `gs://` workdir on a local GCS emulator (`gcs_emulator.py`).

The command is the one `launch.py --dry-run` prints; only the coordinator, which a TPU
pod discovers by itself, is given explicitly. Three launches of one run:

1. It starts; SIGTERM reaches every process, at different moments.
2. It resumes from that checkpoint; SIGTERM reaches one process only.
3. It starts over (`--fresh`) and trains uninterrupted to the step where launch 2
   stopped: the reference.

Launches 1 and 2 never end by themselves (their `steps` is far away), so each SIGTERM
lands in training however fast the machine is. Every launch has the learning-rate
schedule of the one-device run `trained_workdir` (`optimizer.decay_steps` pinned), so
`steps` only says where launch 3 stops: the losses of launches 1 and 2 together must be
launch 3's step for step, and the first steps' the one-device run's. `eesep evaluate`,
`calibrate` and `separate` then read the run from the bucket.
"""

import json
import os
import signal
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
import test_train

PROCESSES = 4  # The hosts of a v4-32 slice.
DEVICES_PER_PROCESS = 2
BUCKET = "eesep-pod"
RUN = "pod"
# Launches 1 and 2 would train this far: SIGTERM always comes first.
UNREACHED_STEPS = 1000
# Bounds on every wait, generous for a loaded 2-core machine (a launch's 4 processes
# share its cores): for a launch to log a step (start, compile or read the compiled
# step, restore), for every process to exit after the last SIGTERM (reach the agreed
# step, save one checkpoint), and for an uninterrupted launch.
STEP_SECONDS = 300
EXIT_SECONDS = 120
RUN_SECONDS = 300

# Three launches of four processes, the fewest that check the three behaviours (each
# process compiles its programs: JAX's compilation cache only serves process 0 here,
# as the key of a multi-process CPU program holds the process's own topology). The pod
# is also the suite's multi-process and multi-device training: its losses and its
# validation are compared with the one-device run's.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _wait_for_port(port, process, timeout=60):
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    assert process.poll() is None, "the GCS emulator exited"
    try:
      socket.create_connection(("127.0.0.1", port), timeout=1).close()
      return
    except OSError:
      time.sleep(0.1)
  raise TimeoutError(f"the GCS emulator did not listen on {port} in {timeout} s")


def _losses(metrics):
  """`[(step, train_loss)]` of a run's metrics, in the order they were logged."""
  return [(r["step"], r["train_loss"]) for r in metrics if "train_loss" in r]


class Bucket:
  """The emulator's bucket, read over its JSON API (not through the package's own
  gs:// code, which is what is tested)."""

  def __init__(self, url):
    self.url = url

  def names(self, prefix):
    names, token = [], None
    while True:
      query = {"prefix": prefix, **({"pageToken": token} if token else {})}
      with urllib.request.urlopen(
        f"{self.url}/storage/v1/b/{BUCKET}/o?{urllib.parse.urlencode(query)}", timeout=60
      ) as response:
        listing = json.load(response)
      names += [item["name"] for item in listing.get("items", [])]
      token = listing.get("nextPageToken")
      if not token:
        return names

  def read(self, name):
    quoted = urllib.parse.quote(name, safe="")
    try:
      with urllib.request.urlopen(
        f"{self.url}/storage/v1/b/{BUCKET}/o/{quoted}?alt=media", timeout=60
      ) as response:
        return response.read()
    except urllib.error.HTTPError as error:
      if error.code == 404:
        return None
      raise

  def metrics(self, run):
    text = self.read(f"{run}/metrics.jsonl")
    return [json.loads(line) for line in text.decode().splitlines()] if text else []

  def losses(self, run):
    return _losses(self.metrics(run))

  def checkpoint_steps(self, run):
    """Steps of the finished checkpoints (orbax writes `commit_success.txt` last on GCS)."""
    return sorted(
      {
        int(name.split("/")[2])
        for name in self.names(f"{run}/checkpoints/")
        if name.endswith("/commit_success.txt") and name.count("/") == 3
      }
    )


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
  """`(environment, Bucket)`: a GCS emulator on 127.0.0.1 holding an empty bucket, and
  the variables that point gcsfs, google-cloud-storage and tensorstore at it."""
  port = _free_port()
  log = tmp_path_factory.mktemp("gcs") / "emulator.log"
  with open(log, "w") as out:
    emulator = subprocess.Popen(
      [
        sys.executable,
        str(REPO / "tests" / "gcs_emulator.py"),
        "--port",
        str(port),
        "--bucket",
        BUCKET,
      ],
      stdout=out,
      stderr=subprocess.STDOUT,
    )
  try:
    _wait_for_port(port, emulator)
    url = f"http://127.0.0.1:{port}"
    env = {
      "STORAGE_EMULATOR_HOST": url,
      "TENSORSTORE_GCS_HTTP_URL": url,
      # gcsfs's default file system asks the bucket's layout of a control-plane API
      # the emulator lacks; the plain one is what the emulator serves.
      "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
      "GOOGLE_CLOUD_PROJECT": "test",
    }
    yield env, Bucket(url)
  finally:
    emulator.terminate()
    try:
      emulator.wait(timeout=30)
    except subprocess.TimeoutExpired:
      emulator.kill()
      emulator.wait()


def test_the_emulator_keeps_object_generations_as_gcs_does(gcs, monkeypatch):
  """The scaffolding's own check: tensorstore reads back the generation it wrote, and a
  write on the condition of an older generation does not happen."""
  env_vars, _ = gcs
  monkeypatch.setenv("TENSORSTORE_GCS_HTTP_URL", env_vars["TENSORSTORE_GCS_HTTP_URL"])
  import tensorstore as ts

  store = ts.KvStore.open({"driver": "gcs", "bucket": BUCKET, "path": "generations/"}).result()
  first = store.write("key", b"first").result().generation
  read = store.read("key").result()
  assert (read.value, read.stamp.generation) == (b"first", first)
  second = store.write("key", b"second", if_equal=first).result().generation
  assert second not in (first, b"")
  # On a stale condition the write is not done, and says so with no generation.
  assert store.write("key", b"third", if_equal=first).result().generation == b""
  assert store.read("key").result().value == b"second"


def _launcher_command(corpus, steps):
  """The `eesep train` argv that `launch.py --dry-run` starts on every worker of a v4-32
  slice, run with this Python."""
  returncode, commands, stderr = test_tpu_launch._dry_run(
    "--name",
    "pod",
    "--zone",
    "us-central2-b",
    "--accelerator-type",
    "v4-32",
    "--config",
    "eesep_jax/configs/demo.py",
    "--workdir",
    f"gs://{BUCKET}/{RUN}",
    *(f"--override={flag.removeprefix('--config.')}" for flag in TRAIN_OVERRIDES),
    f"--override=data.root={corpus}",
    f"--override=steps={steps}",
    "--override=checkpoint_every=1000",
    "--run-id",
    "POD",
  )
  assert returncode == 0, stderr
  (start,) = [c for c in commands if "nohup" in (test_tpu_launch._flag(c, "command") or "")]
  argv = test_tpu_launch._train_argv(test_tpu_launch._flag(start, "command"))
  assert argv[:2] == ["$HOME/eesep_venv/bin/eesep", "train"] and "--distributed" in argv
  return [sys.executable, "-m", "eesep_jax.app.cli", *argv[1:]]


class Pod:
  """The processes of one launch, each in a session of its own: the launcher's command,
  each with its coordinates."""

  def __init__(self, argv, env, logs):
    coordinator = f"127.0.0.1:{_free_port()}"
    self.logs = [logs / f"process{index}.log" for index in range(PROCESSES)]
    self.processes = []
    for index, log in enumerate(self.logs):
      with open(log, "w") as out:
        self.processes.append(
          subprocess.Popen(
            [
              *argv,
              "--coordinator",
              coordinator,
              "--num-processes",
              str(PROCESSES),
              "--process-id",
              str(index),
            ],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
          )
        )

  def tails(self):
    return "\n".join(f"--- {log.name}:\n{log.read_text()[-3000:]}" for log in self.logs)

  def wait_for_step(self, bucket, run, step):
    """Blocks until the run has logged `step` (every process is then training)."""
    deadline = time.monotonic() + STEP_SECONDS
    while time.monotonic() < deadline:
      if any(process.poll() is not None for process in self.processes):
        pytest.fail(f"a process exited before step {step}:\n{self.tails()}")
      if any(s >= step for s, _ in bucket.losses(run)):
        return
      time.sleep(0.2)
    pytest.fail(f"no step {step} in gs://{BUCKET}/{run} after {STEP_SECONDS} s:\n{self.tails()}")

  def wait(self, timeout):
    """Every process's exit status; fails when one still runs after `timeout` s."""
    deadline = time.monotonic() + timeout
    try:
      return [p.wait(timeout=max(deadline - time.monotonic(), 0.1)) for p in self.processes]
    except subprocess.TimeoutExpired:
      pytest.fail(f"still running {timeout} s later:\n{self.tails()}")

  def kill(self):
    """Kills what is left of every process's session (none is left after `wait`)."""
    for process in self.processes:
      try:
        os.killpg(process.pid, signal.SIGKILL)
      except ProcessLookupError:
        pass
      process.wait()

  def stop_steps(self):
    """The steps each process says it stopped at (`preempted: saving step N`)."""
    return [
      [
        int(line.rsplit("saving step ", 1)[1].split()[0])
        for line in log.read_text().splitlines()
        if "preempted: saving step" in line
      ]
      for log in self.logs
    ]


@pytest.fixture(scope="module")
def pod_runs(gcs, tiny_corpus, compile_cache, tmp_path_factory):
  """What each launch left: exit statuses, seconds from the last SIGTERM to the last
  exit, stop steps, and the run's checkpoints and metrics in the bucket."""
  env_vars, bucket = gcs
  env = {**train_env(compile_cache, devices=DEVICES_PER_PROCESS), **env_vars}
  logs = tmp_path_factory.mktemp("pod")
  launches = {}

  def launch(name, steps, *extra, signal_to=(), after_step=None):
    folder = logs / name
    folder.mkdir()
    pod = Pod([*_launcher_command(tiny_corpus, steps), *extra], env, folder)
    try:
      if signal_to:
        pod.wait_for_step(bucket, RUN, after_step)
        for index in signal_to:  # SIGTERM at different moments, in the order given.
          pod.processes[index].terminate()
          time.sleep(0.5)
      signalled = time.monotonic()
      statuses = pod.wait(EXIT_SECONDS if signal_to else RUN_SECONDS)
      metrics = bucket.metrics(RUN)
      launches[name] = {
        "statuses": statuses,
        "exit_seconds": time.monotonic() - signalled,
        "stop_steps": pod.stop_steps(),
        "tails": pod.tails(),
        "checkpoints": bucket.checkpoint_steps(RUN),
        "losses": _losses(metrics),
        "metrics": metrics,
      }
    finally:
      pod.kill()

  launch("every_process", UNREACHED_STEPS, signal_to=[2, 0, 3, 1], after_step=2)
  first_stop = launches["every_process"]["checkpoints"][-1]
  launch("one_process", UNREACHED_STEPS, signal_to=[3], after_step=first_stop + 1)
  # `--fresh` over a run with checkpoints: the others read the bucket only once the lead
  # has emptied it, or they would resume instead of starting at step 1.
  launch("reference", launches["one_process"]["checkpoints"][-1], "--fresh")
  return launches


def _assert_one_consistent_stop(launch, earlier_checkpoints=()):
  """The step every process of `launch` stopped at, after checking they all did, at the
  same step, once, in time, with that step's checkpoint as the one they added."""
  assert launch["statuses"] == [0] * PROCESSES, launch["tails"]
  assert launch["exit_seconds"] < EXIT_SECONDS
  stops = launch["stop_steps"]
  assert all(len(found) == 1 for found in stops), stops  # Each process stopped once...
  (stop,) = {found[0] for found in stops}  # ... at the same step.
  assert launch["checkpoints"] == sorted([*earlier_checkpoints, stop])
  assert launch["losses"][-1][0] == stop  # No process went on past it.
  return stop


def test_sigterm_to_every_process_stops_all_at_one_checkpoint(pod_runs):
  _assert_one_consistent_stop(pod_runs["every_process"])


def test_sigterm_to_one_process_stops_all_at_one_checkpoint(pod_runs):
  first = pod_runs["every_process"]["checkpoints"]
  second = _assert_one_consistent_stop(pod_runs["one_process"], first)
  assert second > first[-1]  # It trained on from the first stop before it stopped.


def test_resumed_run_has_the_uninterrupted_losses_step_for_step(pod_runs):
  resumed, reference = pod_runs["one_process"], pod_runs["reference"]
  assert reference["statuses"] == [0] * PROCESSES, reference["tails"]
  assert reference["stop_steps"] == [[]] * PROCESSES
  last = resumed["checkpoints"][-1]
  assert reference["checkpoints"] == [last]
  steps = [step for step, _ in resumed["losses"]]
  # Each step once across the two launches: the resume took the next step and batch.
  assert steps == list(range(1, last + 1))
  assert [step for step, _ in reference["losses"]] == steps
  # Bit for bit, as a resumed single-process run is.
  assert [loss for _, loss in resumed["losses"]] == [loss for _, loss in reference["losses"]]


def test_the_pod_gives_the_one_device_losses_and_validation(
  pod_runs, trained_workdir, gcs, monkeypatch
):
  """8 devices in 4 processes, each loading its share of every global batch, train as
  one device does; validation, each process evaluating its share of every batch filled
  up with weight-0 copies, gives what one device gives with the same parameters."""
  for name, value in gcs[0].items():
    monkeypatch.setenv(name, value)
  from eesep_jax import data as data_lib
  from eesep_jax import models
  from eesep_jax.analysis import evaluate
  from eesep_jax.training import checkpoints
  from eesep_jax.training import train

  reference = pod_runs["reference"]
  pod = dict(reference["losses"])
  one = test_train._train_losses(trained_workdir)  # pylint: disable=protected-access
  steps = sorted(set(pod) & set(one))
  assert steps[0] == 1 and len(steps) >= 3, steps
  np.testing.assert_allclose(pod[1], one[1], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose([pod[s] for s in steps], [one[s] for s in steps], rtol=1e-4, atol=1e-5)

  (validated,) = [r for r in reference["metrics"] if "valid_si_snri" in r]
  run = f"gs://{BUCKET}/{RUN}"
  config = checkpoints.read_config(run)
  model_config, variables = checkpoints.restore_params(run, step=validated["step"])
  one_device = train.evaluate_exits(
    variables["params"],
    models.PressNet(model_config),
    data_lib.validation_batches(
      config, batch_size=train.validation_batch_size(1), pad_seconds=evaluate.PAD_SECONDS
    ),
  )
  np.testing.assert_allclose(
    validated["valid_si_snri"], one_device["si_snri"], rtol=1e-4, atol=1e-4
  )


def test_evaluate_calibrate_and_separate_read_the_run_from_the_bucket(
  pod_runs, gcs, tiny_corpus, tmp_path, monkeypatch, capsys
):
  env_vars, bucket = gcs
  for name, value in env_vars.items():
    monkeypatch.setenv(name, value)
  from eesep_jax.analysis import calibration
  from eesep_jax.analysis import evaluate
  from eesep_jax.app import cli

  run = f"gs://{BUCKET}/{RUN}"
  assert (
    cli.main(
      [
        "evaluate",
        "--checkpoint",
        run,
        "--out",
        str(tmp_path / "evaluation"),
        "--max-utterances",
        "2",
      ]
    )
    is None
  )
  summary = json.loads((tmp_path / "evaluation" / evaluate.JSON_FILE).read_text())
  assert summary["checkpoint"] == run and summary["num_utterances"] == 2

  cli.main(
    [
      "calibrate",
      "--checkpoint",
      run,
      "--out",
      str(tmp_path / "calibration"),
      "--max-utterances",
      "2",
      "--targets",
      "0.5,5",
      "--confidences",
      "0.3,0.9",
      "--target-snr",
      "2",
      "--delta",
      "0.5",
      "--epsilon",
      "0.5",
    ]
  )
  saved = json.loads(bucket.read(f"{RUN}/{calibration.POSTHOC_FILE}"))
  report = json.loads((tmp_path / "calibration" / "calibration.json").read_text())
  np.testing.assert_allclose(saved["beta_scale"], report["posthoc"]["scales"]["beta_scale"])
  capsys.readouterr()

  mixture = next((tiny_corpus / "tt" / "mix").glob("*.wav"))
  assert (
    cli.main(
      ["separate", str(mixture), "--checkpoint", run, "--out-dir", str(tmp_path / "separated")]
    )
    == 0
  )
  stderr = capsys.readouterr().err
  assert f"applying post-hoc calibration from {run}/{calibration.POSTHOC_FILE}" in stderr
  assert sorted(p.name for p in (tmp_path / "separated").iterdir()) == [
    f"{mixture.stem}_s1.wav",
    f"{mixture.stem}_s2.wav",
  ]
