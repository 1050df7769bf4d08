"""The demo job end to end, on the session's trained run (training resumes at its end)."""

import json
import shutil

import pytest

from conftest import DEMO_CONFIG
from conftest import TRAIN_CONFIG_OVERRIDES
from eesep_jax import errors
from eesep_jax.app import cli
from eesep_jax.app import demo


def test_demo_evaluates_separates_and_summarises(tmp_path, tiny_corpus, trained_workdir, capsys):
  workdir = tmp_path / "demo"
  shutil.copytree(trained_workdir, workdir)
  checks = tmp_path / "checks"  # The check sets' folders, standing in for the real ones.
  checks.mkdir()
  for name in ("kokoro", "recorded"):
    (checks / name).symlink_to(tiny_corpus)
  summary = demo.main(
    workdir,
    DEMO_CONFIG,
    [
      f"data.root={tiny_corpus}",
      f"data.heldout_root={tiny_corpus}",
      f"data.check_root={checks}",
      *TRAIN_CONFIG_OVERRIDES,
    ],
  )

  printed = capsys.readouterr().out
  assert len(summary["per_exit"]) == 3
  assert "SI-SNRi per exit (dB)" in printed and "exit 1  exit 2  exit 3" in printed
  for line in (
    "test split (4 utt.)",
    "held-out voices (4 utt.)",
    "kokoro check (4 utt.)",
    "recorded check (4 utt.)",
    "reach, the policy",
    "reach, full depth",
    "reach, exit 1",
    "compute saved",
    "oracle",
    "satisfaction",
    "mean P, full depth",
    "SI-SNRi (full depth)",
    "Demo finished",
  ):
    assert line in printed, line
  # Six training steps: the exits do not differ, so the config's target is kept.
  assert "target 5 dB (config.inference): no whole dB" in printed
  assert summary["target_snr_db"] == 5.0 and 5.0 in summary["targets_db"]
  for folder in ("evaluation", "evaluation_heldout", "evaluation_kokoro", "evaluation_recorded"):
    for name in ("evaluation.md", "reach_compute.png", "satisfaction.png"):
      assert (workdir / folder / name).is_file()
  assert (workdir / "calibration" / "calibration.json").is_file()
  # Fitted as the demo config says (`evaluation.calibration_method = "brier"`).
  posthoc = json.loads((workdir / "posthoc_calibration.json").read_text())
  assert set(posthoc) == {"beta_scale", "crosstalk_slope", "regime"}
  separated = sorted(path.name for path in (workdir / "separated").iterdir())
  assert len(separated) == 2 and separated[0].endswith("_s1.wav")


def test_a_preempted_demo_ends_with_one_line_and_exit_143(tmp_path, monkeypatch, capsys):
  """`make demo` stopped by SIGTERM in training ends there, rather than evaluate a
  half-trained run; running it again resumes."""

  def preempted(workdir):
    raise errors.Preempted(workdir, 7)

  monkeypatch.setattr(demo, "main", preempted)
  with pytest.raises(SystemExit) as stopped:
    cli.main(["demo", "--workdir", str(tmp_path)])
  assert stopped.value.code == errors.PREEMPTED_EXIT_CODE == 143
  [line] = capsys.readouterr().err.splitlines()
  assert (
    line
    == f"stopped: {tmp_path}: preempted (SIGTERM) at step 7, which is saved; run the same command again to resume"
  )
