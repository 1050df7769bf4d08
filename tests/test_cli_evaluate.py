"""`eesep evaluate` on a random tiny model: the report of a checkpoint's test split, and
its usage errors."""

import json

import pytest

from conftest import write_speech_mixtures
from eesep_jax import config_lib
from eesep_jax.analysis import evaluate
from eesep_jax.analysis import exit_table
from eesep_jax.app import cli
from eesep_jax.training import checkpoints

RATE = 8000
TARGETS = (0.5, 2.0, 5.0)  # Where a random model's exit probabilities vary.


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  """A wsj0-mix test split of three 1 s mixtures (one length: one compilation); the last
  one's second source is silent."""
  root = tmp_path_factory.mktemp("wsj0-mix")
  write_speech_mixtures(
    root, "tt", ("u0", "u1", "silent_s2"), length=RATE, rate=RATE, silent_s2=("silent_s2",)
  )
  return root


def test_cli_evaluates_a_checkpoint_on_its_test_split(model, corpus, tmp_path, monkeypatch, capsys):
  config, variables = model
  monkeypatch.setattr(
    checkpoints,
    "read_config",
    lambda workdir: config_lib.base_config(
      preset="tiny", dataset="wsj0-mix", data_root=str(corpus)
    ),
  )
  monkeypatch.setattr(checkpoints, "restore_params", lambda workdir, step: (config, variables))
  monkeypatch.setattr(checkpoints, "chosen_step", lambda workdir, step=None: 7)
  out = tmp_path / "evaluation"
  cli.main(
    [
      "evaluate",
      "--checkpoint",
      str(tmp_path / "run"),
      "--out",
      str(out),
      "--max-utterances",
      "2",
      "--targets",
      "0.5,2,5",
      "--confidences",
      "0.5,0.9",
    ]
  )
  report = json.loads((out / evaluate.JSON_FILE).read_text())
  assert report["num_utterances"] == 2 and set(TARGETS) <= set(report["targets_db"])
  # The run's default operating point (`config.inference`) heads the report.
  assert (report["target_snr_db"], report["confidence"]) == (15.0, 0.9)
  assert 15.0 in report["targets_db"] and (out / "reach_compute.png").is_file()
  assert report["dataset"].startswith("MixtureSource(wsj0-mix 'tt'")
  assert report["step"] == 7  # The checkpoint's step, as `runs.load` restored it.
  assert "pesq" not in report["per_exit"][0]  # Separation: no enhancement metrics.
  assert (out / evaluate.CSV_FILE).is_file()
  assert exit_table.load(out / evaluate.TABLE_FILE).ids.size == 2
  assert "| probabilistic, p = 0.9 |" in capsys.readouterr().out
  capsys.readouterr()
  with pytest.raises(SystemExit) as raised:
    cli.main(
      [
        "evaluate",
        "--checkpoint",
        str(tmp_path / "run"),
        "--out",
        str(out),
        "--data-root",
        str(tmp_path / "elsewhere"),
      ]
    )
  assert raised.value.code == 2
  assert capsys.readouterr().err == (
    f"error: --data-root {tmp_path / 'elsewhere'}: does not exist\n"
  )
