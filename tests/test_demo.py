"""The demo job end to end, on the session's trained run (training resumes at its end)."""

import shutil

from conftest import DEMO_CONFIG, TRAIN_OVERRIDES
from eesep_jax import demo


def test_demo_evaluates_separates_and_summarises(tmp_path, tiny_corpus, trained_workdir,
                                                capsys):
  workdir = tmp_path / "demo"
  shutil.copytree(trained_workdir, workdir)
  overrides = [flag.removeprefix("--config.") for flag in TRAIN_OVERRIDES]
  summary = demo.main(workdir, DEMO_CONFIG, [f"data.root={tiny_corpus}", *overrides])

  printed = capsys.readouterr().out
  assert len(summary["per_exit"]) == 3
  for k in (1, 2, 3):
    assert f"exit {k}:" in printed
  assert "% saved" in printed and "Demo finished" in printed
  assert (workdir / "evaluation" / "evaluation.md").is_file()
  separated = sorted(path.name for path in (workdir / "separated").iterdir())
  assert len(separated) == 2 and separated[0].endswith("_s1.wav")
