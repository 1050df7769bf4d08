"""`eesep data synth`: its flags reach the synthesiser, bad ones are usage errors."""

import argparse
import json

import pytest

from eesep_jax.data import cli


def test_cli_data_synth(tmp_path, capsys):
  parser = argparse.ArgumentParser(prog="eesep")
  cli.add_data_commands(parser.add_subparsers(dest="command", required=True))
  out = tmp_path / "cli"
  args = parser.parse_args(
    [
      "data",
      "synth",
      "--out",
      str(out),
      "--num-train",
      "2",
      "--num-valid",
      "1",
      "--num-test",
      "1",
      "--noise",
      "white",
      "--sample-rate",
      "16000",
      "--seed",
      "1",
      "--quiet",
    ]
  )
  args.handler(args)
  printed = json.loads(capsys.readouterr().out)
  assert printed["layout"] == "wham" and printed["splits"]["tr"]["mixtures"] == 2
  manifest = json.loads((out / "manifest.json").read_text())
  assert manifest["arguments"]["noise"] == "white" and manifest["arguments"]["sample_rate"] == 16000
  with pytest.raises(SystemExit):
    parser.parse_args(["data", "synth", "--out", "x", "--num-sources", "4"])
  capsys.readouterr()
  with pytest.raises(SystemExit):
    parser.parse_args(["data", "synth", "--help"])
  assert "example:\n  eesep data synth --out" in capsys.readouterr().out
