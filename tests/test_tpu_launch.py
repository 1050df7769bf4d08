"""The Cloud TPU launcher (experiments/tpu/launch.py): its commands, checks and scripts.

No network and no gcloud: `--dry-run` prints the commands, a fake runner stands in for
gcloud in-process, and the scripts meant for the workers run under bash in a temporary home.
"""

import importlib.util
import json
import os
import pathlib
import re
import shlex
import shutil
import subprocess
import sys
import time
import tomllib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
LAUNCH = REPO / "experiments" / "tpu" / "launch.py"
CONFIG = "experiments/configs/wsj0_2mix_press4.py"
WORKDIR = "gs://my-bucket/runs/press4"
POD = [
  "--name",
  "eesep-pod",
  "--zone",
  "us-central2-b",
  "--accelerator-type",
  "v4-32",
  "--config",
  CONFIG,
  "--workdir",
  WORKDIR,
  "--override",
  "data.root=/data/wsj0 mix",
  "--override",
  "steps=1000",
  "--run-id",
  "TEST",
]


def _load_launch():
  spec = importlib.util.spec_from_file_location("tpu_launch", LAUNCH)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


launch = _load_launch()


def _pinned_jax():
  """The lower bound of the jax requirement, read here independently of launch.py."""
  with open(REPO / "pyproject.toml", "rb") as f:
    dependencies = tomllib.load(f)["project"]["dependencies"]
  (jax,) = [d for d in dependencies if re.match(r"jax\s*[<>=~!]", d)]
  return re.search(r">=\s*([\d.]+)", jax).group(1)


def _dry_run(*args, env=None):
  result = subprocess.run(
    [sys.executable, str(LAUNCH), "--dry-run", *args],
    capture_output=True,
    text=True,
    timeout=60,
    env=env,
  )
  return (
    result.returncode,
    [shlex.split(line) for line in result.stdout.splitlines()],
    result.stderr,
  )


def _flag(cmd, name):
  """The value of `--name=value` in `cmd`, or None."""
  values = [token.split("=", 1)[1] for token in cmd if token.startswith(f"--{name}=")]
  assert len(values) <= 1, cmd
  return values[0] if values else None


def _verb(cmd):
  """`describe`, `create`, `ssh`, ... for gcloud; the program's name otherwise."""
  return cmd[4] if cmd[:4] == ["gcloud", "compute", "tpus", "tpu-vm"] else cmd[0]


def _statements(script):
  """`script` split into simple commands (lists of words) on ; & && || |."""
  lexer = shlex.shlex(script, posix=True, punctuation_chars=True)
  lexer.whitespace_split = True
  statements, current = [], []
  for token in lexer:
    if token in (";", "&", "&&", "||", "|"):
      statements.append(current)
      current = []
    else:
      current.append(token)
  return [s for s in statements + [current] if s]


def _train_argv(start_script):
  """The `eesep train` command line inside the nohup'd `bash -c` of the start script."""
  (nohup,) = [s for s in _statements(start_script) if "nohup" in s]
  inner = nohup[nohup.index("-c") + 1]
  (train,) = [s for s in _statements(inner) if s[0].endswith("/eesep")]
  return train


def test_dry_run_of_a_pod_slice_prints_every_step_in_order():
  returncode, commands, stderr = _dry_run(*POD)
  assert returncode == 0, stderr
  assert [_verb(c) for c in commands] == [
    "describe",
    "create",
    "tar",
    "scp",
    "ssh",
    "ssh",
    "ssh",
    "ssh",
  ]
  describe, create, tar, scp, unpack, install, start, stream = commands

  for cmd in (describe, create, scp, unpack, install, start, stream):
    assert _flag(cmd, "zone") == "us-central2-b", cmd
  assert describe[5] == create[5] == "eesep-pod"
  assert _flag(create, "accelerator-type") == "v4-32"
  assert _flag(create, "version") == "tpu-ubuntu2204-base"
  assert "--spot" not in create and "--project" not in " ".join(create)

  # The local checkout, tarred, reaches every worker.
  assert tar[tar.index("-C") + 1] == str(REPO)
  assert tar[tar.index("-czf") + 1] == scp[5]
  assert scp[6].startswith("eesep-pod:") and _flag(scp, "worker") == "all"
  assert _flag(unpack, "worker") == "all"
  assert [
    "tar",
    "-xzf",
    "$HOME/" + scp[6].split(":", 1)[1],
    "-C",
    "$HOME/eesep_jax",
  ] in _statements(_flag(unpack, "command"))

  # Install: the package with its tpu extra, jax at the version pyproject.toml pins.
  assert _flag(install, "worker") == "all"
  pip = [s for s in _statements(_flag(install, "command")) if "-e" in s]
  assert pip == [
    [
      "$HOME/eesep_venv/bin/python",
      "-m",
      "pip",
      "install",
      "--quiet",
      f"jax=={_pinned_jax()}",
      "-e",
      ".[tpu]",
    ]
  ]

  # The same training command on every worker, under nohup, logging to a file.
  assert _flag(start, "worker") == "all"
  script = _flag(start, "command")
  assert _train_argv(script) == [
    "$HOME/eesep_venv/bin/eesep",
    "train",
    "--config",
    CONFIG,
    "--workdir",
    WORKDIR,
    "--distributed",
    "--config.data.root=/data/wsj0 mix",
    "--config.steps=1000",
  ]
  assert 'LOG="$HOME/eesep_logs/TEST-worker$W.log"' in script
  assert re.search(r'nohup bash -c .* >> "\$LOG" 2>&1 < /dev/null &', script)

  # Then worker 0's log is followed until the run ends.
  assert _flag(stream, "worker") == "0"
  assert _statements(_flag(stream, "command")) == [
    [
      "tail",
      "-n",
      "+1",
      "-F",
      "--pid=$(cat $HOME/eesep_logs/train.pid)",
      "$HOME/eesep_logs/TEST-worker0.log",
    ]
  ]
  assert "does not exist" in stderr


def test_help_has_an_example():
  result = subprocess.run(
    [sys.executable, str(LAUNCH), "--help"], capture_output=True, text=True, timeout=60
  )
  assert result.returncode == 0
  assert "example" in result.stdout and "--dry-run" in result.stdout
  assert "--assume-state" not in result.stdout  # A testing seam, not for users.


def test_dry_run_executes_nothing(tmp_path):
  """gcloud, tar and git on PATH are traps: a dry run must call none of them."""
  bin_dir, calls = tmp_path / "bin", tmp_path / "calls"
  bin_dir.mkdir()
  for program in ("gcloud", "tar", "git", "ssh", "scp"):
    (bin_dir / program).write_text(f"#!/bin/sh\necho {program} >> {calls}\n")
    (bin_dir / program).chmod(0o755)
  env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", TMPDIR=str(tmp_path))
  returncode, commands, stderr = _dry_run(*POD, "--delete-after", env=env)
  assert returncode == 0, stderr
  assert len(commands) == 10
  assert not calls.exists()
  assert not (tmp_path / "eesep_jax-eesep-pod.tar.gz").exists()


@pytest.mark.parametrize("accelerator_type", ["v4-32", "v5litepod-16", "v5p-16", "v6e-32"])
def test_local_workdir_on_a_multi_host_slice_is_an_error(accelerator_type):
  args = [a if a != WORKDIR else "runs/press4" for a in POD]
  args[args.index("v4-32")] = accelerator_type
  returncode, commands, stderr = _dry_run(*args)
  assert returncode == 2
  assert commands == []
  assert "argument --workdir" in stderr and "gs://" in stderr and "runs/press4" in stderr


@pytest.mark.parametrize(
  "accelerator_type,version",
  [
    ("v4-8", "tpu-ubuntu2204-base"),
    ("v5litepod-8", "v2-alpha-tpuv5-lite"),
    ("v5p-8", "v2-alpha-tpuv5"),
    ("v6e-4", "v2-alpha-tpuv6e"),
  ],
)
def test_one_host_accepts_a_local_workdir_under_home(accelerator_type, version):
  args = [a if a != WORKDIR else "runs/press4" for a in POD]
  args[args.index("v4-32")] = accelerator_type
  returncode, commands, stderr = _dry_run(*args)
  assert returncode == 0, stderr
  assert _flag(commands[1], "version") == version
  train = _train_argv(_flag(commands[6], "command"))
  assert train[train.index("--workdir") + 1] == "$HOME/runs/press4"
  assert "--distributed" in train  # A job of one: the same code path as a pod's.


def test_num_workers():
  assert [
    launch.num_workers(t)
    for t in (
      "v2-8",
      "v3-32",
      "v4-8",
      "v4-16",
      "v4-32",
      "v5p-8",
      "v5p-128",
      "v5litepod-1",
      "v5litepod-8",
      "v5litepod-16",
      "v5litepod-256",
      "v6e-8",
      "v6e-64",
      "v9z-8",
    )
  ] == [1, 4, 1, 2, 4, 1, 16, 1, 1, 4, 64, 1, 16, None]


def test_argument_errors_name_the_argument():
  def error(*replace, extra=()):
    args = list(POD)
    for old, new in replace:
      args[args.index(old)] = new
    returncode, commands, stderr = _dry_run(*args, *extra)
    assert returncode == 2 and commands == []
    return stderr

  assert "argument --accelerator-type" in error(("v4-32", "tpu-32"))
  assert "argument --version" in error(("v4-32", "v9z-8"))  # No default runtime for it.
  assert "argument --config" in error((CONFIG, "experiments/configs/nope.py"))
  assert "argument --override" in error(("steps=1000", "steps"))
  assert "argument --repo" in error(extra=["--repo", "/no/such/checkout"])
  assert "argument --delete-after" in error(extra=["--delete-after", "--detach"])


def test_config_by_name_options_and_git_repo():
  args = [a if a != CONFIG else "wsj0_2mix_press4" for a in POD]
  returncode, commands, stderr = _dry_run(
    *args,
    "--spot",
    "--project",
    "my-proj",
    "--version",
    "tpu-custom",
    "--jax-version",
    "9.9.9",
    "--repo",
    "https://github.com/example/eesep_jax.git",
    "--branch",
    "dev",
    "--create-arg=--reserved",
    "--setup",
    "gsutil -m cp -r gs://b/d /data",
  )
  assert returncode == 0, stderr
  assert [_verb(c) for c in commands] == ["describe", "create", "ssh", "ssh", "ssh", "ssh", "ssh"]
  describe, create, clone, install, setup, start, _ = commands
  assert all(_flag(c, "project") == "my-proj" for c in commands)
  assert "--spot" in create and "--reserved" in create
  assert _flag(create, "version") == "tpu-custom"
  assert _flag(clone, "worker") == "all"
  assert [
    "git",
    "clone",
    "--quiet",
    "--depth=1",
    "--branch=dev",
    "https://github.com/example/eesep_jax.git",
    "$HOME/eesep_jax",
  ] in _statements(_flag(clone, "command"))
  assert "jax==9.9.9" in _statements(_flag(install, "command"))[-1]
  assert _flag(setup, "worker") == "all"
  assert ["gsutil", "-m", "cp", "-r", "gs://b/d", "/data"] in _statements(_flag(setup, "command"))
  assert CONFIG in _train_argv(_flag(start, "command"))


def test_reuse_of_a_ready_tpu_skips_creation():
  returncode, commands, stderr = _dry_run(*POD, "--assume-state", "READY")
  assert returncode == 0, stderr
  assert [_verb(c) for c in commands] == [
    "describe",
    "ssh",
    "tar",
    "scp",
    "ssh",
    "ssh",
    "ssh",
    "ssh",
  ]
  assert "reusing" in stderr
  # Before the code is replaced, every worker checks that no earlier run is still going.
  preflight = commands[1]
  assert _flag(preflight, "worker") == "all"
  assert "already running" in _flag(preflight, "command")
  _, commands, _ = _dry_run(*POD, "--assume-state", "READY", "--restart")
  assert "kill -TERM" in _flag(commands[1], "command")


def test_delete_after_waits_for_every_worker_then_deletes():
  returncode, commands, stderr = _dry_run(*POD, "--delete-after")
  assert returncode == 0, stderr
  wait, delete = commands[-2:]
  assert _flag(wait, "worker") == "all" and "kill -0" in _flag(wait, "command")
  assert delete[4:6] == ["delete", "eesep-pod"] and "--quiet" in delete
  assert _flag(delete, "zone") == "us-central2-b"


class FakeRunner(launch.Runner):
  """Records commands instead of running them; `describe` answers with `state`."""

  def __init__(self, state=None, accelerator_type="v4-32", stream_status=0):
    super().__init__(dry_run=False)
    self.commands = []
    self.state, self.accelerator_type, self.stream_status = state, accelerator_type, stream_status

  def run(self, cmd, check=True, retries=0):
    self.commands.append(cmd)
    return self.stream_status if "tail" in (_flag(cmd, "command") or "") else 0

  def capture(self, cmd):
    self.commands.append(cmd)
    if self.state is None:
      return subprocess.CompletedProcess(cmd, 1, "", "ERROR: (gcloud) NOT_FOUND: eesep-pod")
    return subprocess.CompletedProcess(
      cmd, 0, json.dumps({"state": self.state, "acceleratorType": self.accelerator_type}), ""
    )

  def sleep(self, seconds):
    self.state = "READY"


def _launch(runner, *extra):
  args = [a for a in POD if a != "--dry-run"]
  returncode = launch.main(args + list(extra), runner=runner)
  return returncode, [_verb(c) for c in runner.commands]


@pytest.mark.parametrize(
  "state,expected",
  [
    (None, ["describe", "create"]),
    ("READY", ["describe", "ssh"]),  # Then a check that no run is going.
    ("STOPPED", ["describe", "start", "ssh"]),
    ("CREATING", ["describe", "describe", "ssh"]),
  ],
)
def test_tpu_states_outside_a_dry_run(state, expected):
  returncode, verbs = _launch(FakeRunner(state))
  assert returncode == 0
  assert verbs == expected + ["tar", "scp", "ssh", "ssh", "ssh", "ssh"]


def test_a_preempted_tpu_is_recreated_only_when_asked(capsys):
  returncode, verbs = _launch(FakeRunner("PREEMPTED"))
  assert returncode == 1 and verbs == ["describe"]
  assert "--recreate" in capsys.readouterr().err
  returncode, verbs = _launch(FakeRunner("PREEMPTED"), "--recreate")
  assert returncode == 0 and verbs[:3] == ["describe", "delete", "create"]


def test_an_existing_tpu_of_another_type_is_an_error(capsys):
  returncode, verbs = _launch(FakeRunner("READY", accelerator_type="v4-8"))
  assert returncode == 1 and verbs == ["describe"]
  assert "--accelerator-type" in capsys.readouterr().err


def test_no_deletion_when_the_stream_stops_early(capsys):
  returncode, verbs = _launch(FakeRunner("READY", stream_status=255), "--delete-after")
  assert returncode == 0 and "delete" not in verbs
  assert "not deleting" in capsys.readouterr().err
  returncode, verbs = _launch(FakeRunner("READY", stream_status=0), "--delete-after")
  assert verbs[-2:] == ["ssh", "delete"]


def test_remote_scripts_are_valid_bash():
  _, commands, _ = _dry_run(
    *POD, "--delete-after", "--restart", "--setup", "true", "--assume-state", "READY"
  )
  scripts = [_flag(c, "command") for c in commands if _verb(c) == "ssh"]
  assert len(scripts) == 7  # Preflight, unpack, install, setup, start, stream, wait.
  for script in scripts:
    result = subprocess.run(["bash", "-n", "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, (script, result.stderr)


@pytest.mark.skipif(
  not (shutil.which("setsid") and sys.platform.startswith("linux")),
  reason="needs setsid and GNU tail",
)
def test_start_and_stream_scripts_run_training_in_the_background(tmp_path):
  """Runs the worker-side scripts for real, with a fake `eesep`, `curl` and `gcloud`."""
  home, bin_dir, calls = tmp_path / "home", tmp_path / "bin", tmp_path / "gcloud-calls"
  (home / "eesep_jax").mkdir(parents=True)
  (home / "eesep_venv" / "bin").mkdir(parents=True)
  bin_dir.mkdir()
  eesep = home / "eesep_venv" / "bin" / "eesep"
  eesep.write_text('#!/bin/bash\necho "args: $*"\n[ -f "$HOME/block" ] && sleep 30\nexit 3\n')
  (bin_dir / "curl").write_text("#!/bin/sh\nexit 7\n")  # No metadata server: worker 0.
  (bin_dir / "gcloud").write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
  for program in (eesep, bin_dir / "curl", bin_dir / "gcloud"):
    program.chmod(0o755)
  env = dict(os.environ, HOME=str(home), PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")

  def scripts(*extra):
    _, commands, _ = _dry_run(*POD, *extra)
    return _flag(commands[6], "command"), _flag(commands[7], "command")

  def bash(script, timeout=30):
    return subprocess.run(
      ["bash", "-c", script], env=env, capture_output=True, text=True, timeout=timeout
    )

  start, stream = scripts()
  started = bash(start)
  assert started.returncode == 0, started.stderr
  assert "worker 0: training started" in started.stdout
  streamed = bash(stream)  # Returns once the run ends: tail --pid.
  assert streamed.returncode == 0, streamed.stderr
  assert (
    "args: train --config experiments/configs/wsj0_2mix_press4.py --workdir "
    f"{WORKDIR} --distributed --config.data.root=/data/wsj0 mix --config.steps=1000"
    in streamed.stdout
  )
  assert "=== eesep train exited with status 3 ===" in streamed.stdout
  log = home / "eesep_logs" / "TEST-worker0.log"
  assert streamed.stdout.strip() == log.read_text().strip()
  deadline = time.time() + 10
  while not calls.exists() and time.time() < deadline:
    time.sleep(0.1)
  assert calls.read_text().split() == [
    "storage",
    "cp",
    "--quiet",
    str(log),
    f"{WORKDIR}/logs/TEST-worker0.log",
  ]

  # A run still going blocks the next launch, unless --restart stops it.
  (home / "block").touch()
  assert bash(start).returncode == 0
  first = int((home / "eesep_logs" / "train.pid").read_text())
  again = bash(start)
  assert again.returncode == 1 and "already running" in again.stderr
  restart, _ = scripts("--restart")
  (home / "block").unlink()
  restarted = bash(restart)
  assert restarted.returncode == 0, restarted.stderr
  assert int((home / "eesep_logs" / "train.pid").read_text()) != first
  with pytest.raises(ProcessLookupError):
    os.killpg(first, 0)  # The whole earlier run is gone, eesep included.
  assert bash(stream).returncode == 0


def test_shell_wrapper_passes_arguments_through():
  result = subprocess.run(
    [str(LAUNCH.with_suffix(".sh")), "--dry-run", *POD],
    capture_output=True,
    text=True,
    timeout=60,
    env=dict(os.environ, PYTHON=sys.executable),
  )
  assert result.returncode == 0, result.stderr
  assert _dry_run(*POD)[1] == [shlex.split(line) for line in result.stdout.splitlines()]
