#!/usr/bin/env python3
"""Launches `eesep train` on a Cloud TPU VM or pod slice, from your own machine.

Steps, each one or more `gcloud compute tpus tpu-vm` commands (`--dry-run` prints them all):

  1. describe the TPU VM: reuse it when it is READY (start it when STOPPED, wait while it is
     CREATING), create it when it does not exist;
  2. put the code on every worker: `git clone` of a git URL, or a tarball of a local checkout
     copied with `scp --worker=all`;
  3. install on every worker: a Python venv (made with uv, since the TPU images' Python is
     older than JAX needs) holding the package with its `tpu` extra (`pip install -e
     ".[tpu]"`, JAX's `jax[tpu]`), jax at the version pinned in pyproject.toml;
  4. start the same `eesep train --distributed` command on every worker under nohup, one
     log file per worker (`--distributed` calls `jax.distributed.initialize()`, which finds
     its peers by itself on TPU VMs);
  5. stream worker 0's log until training ends or you press Ctrl-C (training keeps running);
  6. with `--delete-after`, wait for every worker to finish, then delete the TPU VM.

Only the standard library is used, so it runs from any Python 3.10+ with gcloud on PATH.
"""

import argparse
import json
import os
import pathlib
import re
import shlex
import subprocess
import sys
import tempfile
import time

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]

# Where things go on each worker; `$HOME` is expanded by the worker's shell.
REMOTE_CODE = '"$HOME/eesep_jax"'
REMOTE_VENV = '"$HOME/eesep_venv"'
REMOTE_LOGS = '"$HOME/eesep_logs"'
REMOTE_PIDFILE = '"$HOME/eesep_logs/train.pid"'
REMOTE_PYTHON = '"$HOME/eesep_venv/bin/python"'
REMOTE_ARCHIVE = "eesep_jax-src.tar.gz"  # Relative to the worker's home directory.
UV_INSTALLER = "https://astral.sh/uv/install.sh"
WORKER_NUMBER_URL = (
  "http://metadata.google.internal/computeMetadata/v1/instance/attributes/agent-worker-number"
)

# TPU software ("runtime") versions for JAX: https://cloud.google.com/tpu/docs/runtimes
DEFAULT_RUNTIME = {
  "v2": "tpu-ubuntu2204-base",
  "v3": "tpu-ubuntu2204-base",
  "v4": "tpu-ubuntu2204-base",
  "v5p": "v2-alpha-tpuv5",
  "v5litepod": "v2-alpha-tpuv5-lite",
  "v6e": "v2-alpha-tpuv6e",
}

# Local files left out of the tarball of a local checkout (as in .gitignore). The `./`
# ones only match at the top level: `data` alone would also drop `eesep_jax/data`.
TAR_EXCLUDES = (
  ".git",
  ".venv",
  "__pycache__",
  "*.pyc",
  ".pytest_cache",
  "*.egg-info",
  ".ipynb_checkpoints",
  "./runs",
  "./data",
  "./build",
  "./dist",
)

WAITING_STATES = ("CREATING", "STARTING", "RESTARTING", "REPAIRING")
RECREATE_STATES = ("PREEMPTED", "TERMINATED")

EXAMPLE = """\
example (a 4-host v5e slice, spot capacity; prints the commands and runs nothing):
  python experiments/tpu/launch.py --dry-run \\
      --name press4-wsj --zone us-west4-a --accelerator-type v5litepod-16 --spot \\
      --config experiments/configs/wsj0_2mix_press4.py \\
      --workdir gs://my-bucket/runs/press4-wsj \\
      --override data.root=/data/wsj0-mix/2speakers/wav8k/min --override steps=200000

Drop --dry-run to run it. Launching again with the same --name reuses the TPU VM and,
with the same --workdir, resumes from the latest checkpoint (pass --restart if the
previous run is still going). Ctrl-C stops the log stream, not the training.

TPU VM and pod slices need `gcloud auth login`, a project with TPU quota in the zone and,
for pods, your key in ssh-agent (`ssh-add ~/.ssh/google_compute_engine`)."""


class LaunchError(Exception):
  """A problem the user can fix; printed without a traceback."""


def parse_accelerator(accelerator_type):
  """`"v5litepod-16"` -> `("v5litepod", 16)`; `None` when it does not look like one."""
  match = re.fullmatch(r"(v\d+[a-z]*)-(\d+)", accelerator_type)
  return (match.group(1), int(match.group(2))) if match else None


def num_workers(accelerator_type):
  """How many TPU VM hosts (workers) the slice has; `None` for a generation not listed.

  v2, v3, v4 and v5p count TensorCores in the name, 8 per host; v5e (v5litepod) and
  v6e count chips: up to 8 on one host, 4 per host in multi-host slices.
  """
  parsed = parse_accelerator(accelerator_type)
  if parsed is None:
    return None
  generation, count = parsed
  if generation in ("v2", "v3", "v4", "v5p"):
    return max(1, count // 8)
  if generation in ("v5litepod", "v6e"):
    return 1 if count <= 8 else count // 4
  return None


def pinned_jax_version(pyproject=REPO_ROOT / "pyproject.toml"):
  """The lowest JAX version pyproject.toml allows (`jax>=0.10.2,<0.11` -> `0.10.2`)."""
  text = pathlib.Path(pyproject).read_text(encoding="utf-8")
  requirement = re.search(r'"jax(?![\w.-])\s*(?:\[[^\]]*\])?\s*([^";]*)', text)
  version = requirement and re.search(r"(?:==|>=|~=)\s*([0-9][^,\s]*)", requirement.group(1))
  if not version:
    raise LaunchError(f"no jax>=X or jax==X requirement in {pyproject}: pass --jax-version")
  return version.group(1)


def is_git_url(repo):
  return bool(re.match(r"(https?|ssh|git|file)://", repo) or re.match(r"[\w.-]+@[\w.-]+:", repo))


class Runner:
  """Runs commands, or with `dry_run` prints them (one shell-quoted line each) instead."""

  def __init__(self, dry_run, out=None, err=None):
    self.dry_run = dry_run
    self.out = out or sys.stdout
    self.err = err or sys.stderr

  def note(self, message):
    print(f"# {message}", file=self.err, flush=True)

  def run(self, cmd, check=True, retries=0):
    """Runs `cmd` with the terminal attached; returns its exit status."""
    if self.dry_run:
      print(shlex.join(cmd), file=self.out, flush=True)
      return 0
    for attempt in range(retries + 1):
      print(f"+ {shlex.join(cmd)}", file=self.err, flush=True)
      returncode = self._call(cmd).returncode
      if returncode == 0 or attempt == retries:
        break
      self.note(f"exit status {returncode}; retrying in 20 s ({attempt + 1}/{retries})")
      time.sleep(20)
    if check and returncode != 0:
      raise LaunchError(f"command failed with exit status {returncode}: {shlex.join(cmd)}")
    return returncode

  def capture(self, cmd):
    """Runs `cmd` and returns its `CompletedProcess` (text); `None` in a dry run."""
    if self.dry_run:
      print(shlex.join(cmd), file=self.out, flush=True)
      return None
    print(f"+ {shlex.join(cmd)}", file=self.err, flush=True)
    return self._call(cmd, capture_output=True, text=True)

  @staticmethod
  def _call(cmd, **kwargs):
    try:
      return subprocess.run(cmd, check=False, **kwargs)
    except FileNotFoundError:
      raise LaunchError(
        f"{cmd[0]} not found: install it (gcloud: https://cloud.google.com/sdk/docs/install)"
      ) from None

  def sleep(self, seconds):
    time.sleep(seconds)


class Launcher:
  """The launch steps for parsed, validated `args`."""

  def __init__(self, args, runner):
    self.args = args
    self.runner = runner
    self.run_id = args.run_id or time.strftime("%Y%m%d-%H%M%S")

  # --- gcloud command lines ---------------------------------------------------------------

  def _location(self):
    flags = [f"--zone={self.args.zone}"]
    if self.args.project:
      flags.append(f"--project={self.args.project}")
    return flags

  def gcloud(self, verb, *flags):
    return ["gcloud", "compute", "tpus", "tpu-vm", verb, self.args.name, *self._location(), *flags]

  def ssh(self, command, worker="all"):
    return self.gcloud("ssh", f"--worker={worker}", f"--command={command}")

  def scp(self, local, remote):
    return [
      "gcloud",
      "compute",
      "tpus",
      "tpu-vm",
      "scp",
      local,
      f"{self.args.name}:{remote}",
      "--worker=all",
      *self._location(),
    ]

  def create_command(self):
    flags = [f"--accelerator-type={self.args.accelerator_type}", f"--version={self.args.version}"]
    if self.args.spot:
      flags.append("--spot")
    if self.args.preemptible:
      flags.append("--preemptible")
    return self.gcloud("create", *flags, *self.args.create_arg)

  # --- remote scripts (one line each, so a dry run prints one command per line) -----------

  @property
  def log_file(self):
    """This launch's log on each worker; `$W` is the worker's number."""
    return f'"$HOME/eesep_logs/{self.run_id}-worker$W.log"'

  def remote_workdir(self):
    workdir = self.args.workdir
    if workdir.startswith("gs://") or workdir.startswith("/"):
      return shlex.quote(workdir)
    # Relative to the home directory, not the code directory that each launch replaces.
    return '"$HOME"/' + shlex.quote(workdir)

  def train_command(self):
    """The `eesep train` command line every worker runs (from the code directory).

    `--distributed` joins the workers into one job (`jax.distributed.initialize()`, which
    finds its peers by itself on TPU VMs; a one-host slice is a job of one): they then
    shard each batch over every chip and stop together on preemption.
    """
    parts = [
      '"$HOME/eesep_venv/bin/eesep"',
      "train",
      "--config",
      shlex.quote(self.args.config),
      "--workdir",
      self.remote_workdir(),
      "--distributed",
    ]
    parts += [shlex.quote(f"--config.{override}") for override in self.args.override]
    return " ".join(parts)

  def unpack_script(self):
    return "; ".join(
      [
        "set -euo pipefail",
        f"rm -rf {REMOTE_CODE}",
        f"mkdir -p {REMOTE_CODE}",
        f'tar -xzf "$HOME/{REMOTE_ARCHIVE}" -C {REMOTE_CODE}',
        f'rm -f "$HOME/{REMOTE_ARCHIVE}"',
      ]
    )

  def clone_script(self):
    branch = [f"--branch={shlex.quote(self.args.branch)}"] if self.args.branch else []
    clone = " ".join(
      ["git", "clone", "--quiet", "--depth=1", *branch, shlex.quote(self.args.repo), REMOTE_CODE]
    )
    return "; ".join(["set -euo pipefail", f"rm -rf {REMOTE_CODE}", clone])

  def install_script(self):
    python = REMOTE_PYTHON
    return "; ".join(
      [
        "set -euo pipefail",
        'export PATH="$HOME/.local/bin:$PATH"',
        f"command -v uv >/dev/null 2>&1 || curl -LsSf {UV_INSTALLER} | sh",
        f"uv venv --quiet --allow-existing --seed "
        f"--python={shlex.quote(self.args.python_version)} {REMOTE_VENV}",
        f"{python} -m pip install --quiet --upgrade pip",
        f"cd {REMOTE_CODE}",
        f"{python} -m pip install --quiet "
        f"{shlex.quote(f'jax=={self.args.jax_version}')} -e {shlex.quote('.[tpu]')}",
      ]
    )

  def setup_script(self):
    return "; ".join(["set -euo pipefail", f"cd {REMOTE_CODE}", *self.args.setup])

  def guard(self):
    """Shell: stop (--restart) or refuse to replace a run this launcher started earlier."""
    pid = f'"$(cat {REMOTE_PIDFILE})"'
    # The run is its own process group (setsid), so signals reach eesep, not only bash.
    running = f"[ -f {REMOTE_PIDFILE} ] && kill -0 -- -{pid} 2>/dev/null"
    if self.args.restart:
      # SIGTERM: the training loop saves a checkpoint before it exits.
      on_running = (
        f"kill -TERM -- -{pid}; for i in $(seq 600); do "
        f"kill -0 -- -{pid} 2>/dev/null || break; sleep 1; done; "
        f"kill -KILL -- -{pid} 2>/dev/null || true"
      )
    else:
      on_running = (
        f'echo "eesep training is already running on $(hostname) (pid {pid}): '
        f'pass --restart to stop it first" >&2; exit 1'
      )
    return f"if {running}; then {on_running}; fi"

  def preflight_script(self):
    return f"set -euo pipefail; {self.guard()}"

  def start_script(self):
    pid = f'"$(cat {REMOTE_PIDFILE})"'
    inner = [
      f"echo $$ > {REMOTE_PIDFILE}",
      self.train_command(),
      "rc=$?",
      'echo "=== eesep train exited with status $rc ==="',
    ]
    if self.args.workdir.startswith("gs://"):
      saved_log = shlex.quote(self.args.workdir.rstrip("/") + "/logs/") + '"$(basename "$LOG")"'
      inner.append(f'gcloud storage cp --quiet "$LOG" {saved_log} || true')
    inner.append("exit $rc")
    return "; ".join(
      [
        "set -euo pipefail",
        f"mkdir -p {REMOTE_LOGS}",
        self.guard(),
        f"W=$(curl -sf -m 5 -H Metadata-Flavor:Google {WORKER_NUMBER_URL} || echo 0)",
        f"LOG={self.log_file}",
        "export W LOG",
        f"cd {REMOTE_CODE}",
        'echo "=== $(date -u) worker $W ===" > "$LOG"',
        f'echo {shlex.quote(self.train_command())} >> "$LOG"',
        f"rm -f {REMOTE_PIDFILE}",
        # The run writes its own pid (the group id): setsid may fork, so `$!` can differ.
        f'setsid nohup bash -c {shlex.quote("; ".join(inner))} >> "$LOG" 2>&1 < /dev/null '
        f"& for i in $(seq 100); do [ -s {REMOTE_PIDFILE} ] && break; sleep 0.1; done",
        f'echo "worker $W: training started (pid {pid}), log $LOG"',
      ]
    )

  def stream_script(self):
    log = self.log_file.replace("$W", "0")
    return f'tail -n +1 -F --pid="$(cat {REMOTE_PIDFILE})" {log}'

  def wait_script(self):
    pid = f'"$(cat {REMOTE_PIDFILE})"'
    return f"while [ -f {REMOTE_PIDFILE} ] && kill -0 -- -{pid} 2>/dev/null; do sleep 30; done"

  # --- steps --------------------------------------------------------------------------------

  def describe(self):
    """The TPU VM's description (a dict), or `None` when there is none by that name."""
    result = self.runner.capture(self.gcloud("describe", "--format=json"))
    if result is None:  # Dry run.
      state = self.args.assume_state
      if state == "missing":
        self.runner.note("dry run: assuming the TPU VM does not exist, so it is created")
        return None
      self.runner.note(f"dry run: assuming the TPU VM exists and is {state}")
      return {"state": state, "acceleratorType": self.args.accelerator_type}
    if result.returncode != 0:
      if re.search(r"NOT_FOUND|not found", result.stderr, re.IGNORECASE):
        return None
      raise LaunchError(f"could not describe TPU VM {self.args.name}:\n{result.stderr.strip()}")
    return json.loads(result.stdout)

  def ensure_tpu(self):
    """Step 1: a READY TPU VM called --name, created or reused."""
    info = self.describe()
    if info is None:
      self.runner.note(
        f"creating TPU VM {self.args.name} ({self.args.accelerator_type}, {self.args.version})"
      )
      self.runner.run(self.create_command())
      return "created"
    existing = info.get("acceleratorType")
    if existing and existing != self.args.accelerator_type:
      raise LaunchError(
        f"TPU VM {self.args.name} already exists as a {existing}, not the "
        f"--accelerator-type {self.args.accelerator_type}: pass --accelerator-type {existing} "
        f"or another --name"
      )
    state = info.get("state")
    if state == "READY":
      self.runner.note(f"reusing TPU VM {self.args.name}, which is READY")
      return "reused"
    if state == "STOPPED":
      self.runner.run(self.gcloud("start"))
      return "started"
    if state in WAITING_STATES:
      self.runner.note(f"TPU VM {self.args.name} is {state}; waiting for READY")
      for _ in range(120):  # An hour, every 30 s.
        if self.runner.dry_run:
          return "waited"
        self.runner.sleep(30)
        info = self.describe()
        state = info and info.get("state")
        if state == "READY":
          return "waited"
        if state not in WAITING_STATES:
          break
      raise LaunchError(f"TPU VM {self.args.name} did not become READY (now {state})")
    if state in RECREATE_STATES:
      if not self.args.recreate:
        raise LaunchError(
          f"TPU VM {self.args.name} is {state} and cannot be restarted: pass --recreate to "
          f"delete and create it again (a gs:// --workdir resumes from its checkpoints)"
        )
      self.runner.run(self.gcloud("delete", "--quiet"))
      self.runner.run(self.create_command())
      return "recreated"
    raise LaunchError(f"TPU VM {self.args.name} is {state}; try again once it is READY")

  def preflight(self):
    """Before replacing the code on a TPU VM that was already there: is a run going?"""
    self.runner.run(self.ssh(self.preflight_script()))

  def copy_code(self):
    """Step 2: the code in ~/eesep_jax on every worker."""
    if is_git_url(self.args.repo):
      self.runner.run(self.ssh(self.clone_script()), retries=2)
      return
    archive = os.path.join(tempfile.gettempdir(), f"eesep_jax-{self.args.name}.tar.gz")
    if self.args.branch:
      self.runner.run(
        [
          "git",
          "-C",
          self.args.repo,
          "archive",
          "--format=tar.gz",
          f"--output={archive}",
          self.args.branch,
        ]
      )
    else:
      excludes = [f"--exclude={pattern}" for pattern in TAR_EXCLUDES]
      self.runner.run(["tar", "-czf", archive, *excludes, "-C", self.args.repo, "."])
    try:
      self.runner.run(self.scp(archive, REMOTE_ARCHIVE), retries=2)
    finally:
      if not self.runner.dry_run and os.path.exists(archive):
        os.remove(archive)
    self.runner.run(self.ssh(self.unpack_script()), retries=2)

  def install(self):
    """Step 3: the venv with jax[tpu] and the package on every worker."""
    self.runner.run(self.ssh(self.install_script()), retries=2)
    if self.args.setup:
      self.runner.run(self.ssh(self.setup_script()))

  def start(self):
    """Step 4: `eesep train` under nohup on every worker."""
    self.runner.run(self.ssh(self.start_script()))

  def stream(self):
    """Step 5: worker 0's log until training ends (True) or the stream stops early (False)."""
    command = self.ssh(self.stream_script(), worker="0")
    try:
      returncode = self.runner.run(command, check=False)
    except KeyboardInterrupt:
      returncode = None
    if returncode == 0:
      return True
    self.runner.note("stopped streaming; training goes on on the TPU VM. Follow it again with:")
    self.runner.note(f"  {shlex.join(command)}")
    self.runner.note("Delete the TPU VM when you are done with:")
    self.runner.note(f"  {shlex.join(self.gcloud('delete', '--quiet'))}")
    return False

  def delete(self):
    """Step 6: wait for every worker's training to end, then delete the TPU VM."""
    self.runner.run(self.ssh(self.wait_script()))
    self.runner.run(self.gcloud("delete", "--quiet"))

  def launch(self):
    workers = num_workers(self.args.accelerator_type)
    self.runner.note(
      f"{self.args.accelerator_type}: {workers or 'an unknown number of'} worker(s); "
      f"workdir {self.args.workdir}; logs in ~/eesep_logs/{self.run_id}-worker*.log"
    )
    if self.ensure_tpu() != "created":
      self.preflight()
    self.copy_code()
    self.install()
    self.start()
    if self.args.detach:
      self.runner.note("detached; follow the log with:")
      self.runner.note(f"  {shlex.join(self.ssh(self.stream_script(), worker='0'))}")
      return 0
    finished = self.stream()
    if self.args.delete_after:
      if finished:
        self.delete()
      else:
        self.runner.note("--delete-after: not deleting, since training may still be running")
    return 0


def build_parser():
  parser = argparse.ArgumentParser(
    prog="launch.py",
    description=__doc__.split("\n\nOnly the standard library")[0],
    epilog=EXAMPLE,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  tpu = parser.add_argument_group("TPU VM")
  tpu.add_argument("--name", required=True, help="TPU VM name (reused when it exists)")
  tpu.add_argument("--zone", required=True, help="zone, e.g. us-central2-b or us-west4-a")
  tpu.add_argument(
    "--accelerator-type",
    required=True,
    help="slice type, e.g. v4-8 (1 host), v4-32 (4 hosts), v5litepod-8 (1 host), "
    "v5litepod-16 (4 hosts), v5p-16, v6e-16",
  )
  tpu.add_argument(
    "--version",
    help="TPU software version; default by generation: "
    + ", ".join(f"{g}: {v}" for g, v in DEFAULT_RUNTIME.items()),
  )
  tpu.add_argument("--project", help="Google Cloud project (default: gcloud's core/project)")
  capacity = tpu.add_mutually_exclusive_group()
  capacity.add_argument(
    "--spot",
    action="store_true",
    help="create a spot TPU VM (cheaper; may be preempted at any time)",
  )
  capacity.add_argument(
    "--preemptible", action="store_true", help="create a (legacy) preemptible TPU VM"
  )
  tpu.add_argument(
    "--create-arg",
    action="append",
    default=[],
    metavar="FLAG",
    help="extra flag for `tpu-vm create`, e.g. --create-arg=--reserved or "
    "--create-arg=--service-account=SA (repeatable)",
  )
  tpu.add_argument(
    "--recreate",
    action="store_true",
    help="delete and create the TPU VM again when it is PREEMPTED or TERMINATED",
  )
  tpu.add_argument(
    "--delete-after",
    action="store_true",
    help="delete the TPU VM once training has ended on every worker (not when "
    "you stop the log stream with Ctrl-C)",
  )

  code = parser.add_argument_group("code and install")
  code.add_argument(
    "--repo",
    default=str(REPO_ROOT),
    help="git URL to clone on each worker, or a local checkout to copy there "
    "(default: this checkout, uncommitted changes included)",
  )
  code.add_argument(
    "--branch",
    help="branch or tag: cloned from a git URL, or `git archive`d from a local "
    "checkout (default: the default branch / the working tree)",
  )
  code.add_argument(
    "--jax-version",
    help="version of jax[tpu] to install (default: the lowest that pyproject.toml allows)",
  )
  code.add_argument(
    "--python-version",
    default="3.11",
    help="Python of the venv on the workers (default: %(default)s)",
  )
  code.add_argument(
    "--setup",
    action="append",
    default=[],
    metavar="SHELL",
    help="shell command run on every worker after the install, in the code "
    "directory, e.g. to fetch data (repeatable)",
  )

  train = parser.add_argument_group("training")
  train.add_argument(
    "--config",
    required=True,
    help="config file relative to the repo, or a name in experiments/configs (wsj0_2mix_press4)",
  )
  train.add_argument(
    "--workdir",
    required=True,
    help="where checkpoints and metrics go: gs://BUCKET/PATH (required for "
    "slices of more than one host), or a path on a one-host TPU VM",
  )
  train.add_argument(
    "--override",
    action="append",
    default=[],
    metavar="KEY=VALUE",
    help="config override, passed as --config.KEY=VALUE (repeatable)",
  )
  train.add_argument(
    "--restart",
    action="store_true",
    help="stop a run this launcher started earlier on the workers (it "
    "checkpoints on SIGTERM) instead of refusing to start",
  )
  train.add_argument(
    "--detach", action="store_true", help="start training and return, without streaming the log"
  )

  parser.add_argument(
    "--dry-run",
    action="store_true",
    help="print every command, one per line, and run none (the TPU VM is assumed not to exist)",
  )
  # Testing seams: the state a dry run assumes `describe` reports, and the log file stamp.
  parser.add_argument(
    "--assume-state",
    default="missing",
    help=argparse.SUPPRESS,
    choices=["missing", "READY", "STOPPED", "CREATING", "PREEMPTED"],
  )
  parser.add_argument("--run-id", help=argparse.SUPPRESS)
  return parser


def parse_args(argv=None):
  parser = build_parser()
  args = parser.parse_args(argv)

  if parse_accelerator(args.accelerator_type) is None:
    parser.error(
      f"argument --accelerator-type: {args.accelerator_type!r} is not like v4-8 or v5litepod-16"
    )
  workers = num_workers(args.accelerator_type)
  if args.version is None:
    generation = parse_accelerator(args.accelerator_type)[0]
    if generation not in DEFAULT_RUNTIME:
      parser.error(
        f"argument --version: required for {args.accelerator_type} (no default for {generation})"
      )
    args.version = DEFAULT_RUNTIME[generation]
  if (workers is None or workers > 1) and not args.workdir.startswith("gs://"):
    hosts = f"{workers} hosts" if workers else "possibly several hosts"
    parser.error(
      f"argument --workdir: {args.accelerator_type} has {hosts}, which must share "
      f"the workdir: use gs://BUCKET/PATH, not {args.workdir!r}"
    )

  if not is_git_url(args.repo):
    if not pathlib.Path(args.repo).is_dir():
      parser.error(f"argument --repo: {args.repo!r} is neither a git URL nor a directory")
    args.repo = str(pathlib.Path(args.repo).resolve())
  if "/" not in args.config and not args.config.endswith(".py"):
    args.config = f"experiments/configs/{args.config}.py"
  if (
    not is_git_url(args.repo)
    and not args.branch
    and not (pathlib.Path(args.repo) / args.config).is_file()
  ):
    parser.error(f"argument --config: {args.config} is not a file in {args.repo}")

  overrides = []
  for override in args.override:
    key = override.removeprefix("--").removeprefix("config.")
    if not re.fullmatch(r"[A-Za-z_][\w.]*=.*", key, re.DOTALL):
      parser.error(f"argument --override: {override!r} is not KEY=VALUE")
    overrides.append(key)
  args.override = overrides

  if args.jax_version is None:
    try:
      args.jax_version = pinned_jax_version()
    except (OSError, LaunchError) as error:
      parser.error(f"argument --jax-version: needed, since {error}")
  if args.delete_after and args.detach:
    parser.error(
      "argument --delete-after: not allowed with --detach (nothing would wait for training to end)"
    )
  if args.assume_state != "missing" and not args.dry_run:
    parser.error("argument --assume-state: only with --dry-run")
  return args


def main(argv=None, runner=None):
  args = parse_args(argv)
  runner = runner or Runner(args.dry_run)
  try:
    return Launcher(args, runner).launch()
  except LaunchError as error:
    print(f"launch.py: error: {error}", file=sys.stderr)
    return 1
  except KeyboardInterrupt:
    print("launch.py: interrupted", file=sys.stderr)
    return 130


if __name__ == "__main__":
  sys.exit(main())
