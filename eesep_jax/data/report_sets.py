"""The sets a run is reported on: its test split, the held-out voices and the check sets.

    data.ensure_report_sets(config)  # made when the config asks for a corpus to be made
    for name, set_config in data.report_configs(config).items():
      source = data.open_split(set_config, config.data.test_split)

The demo and the ablation report on the same sets, each set named as the reports'
folders are (`evaluation_<name>`): "test" (the config's own corpus), "heldout"
(`config.data.heldout_root`) and each of `config.data.check_sets` (under
`config.data.check_root`).
"""

import pathlib

from eesep_jax.data import checksets
from eesep_jax.data import synth

TEST_SET = "test"
HELDOUT_SET = "heldout"


def report_roots(config):
  """`{name: root}` of every report set of `config`, the test split's corpus first."""
  roots = {TEST_SET: config.data.root}
  if config.data.get("heldout_root"):
    roots[HELDOUT_SET] = config.data.heldout_root
  for name in config.data.get("check_sets") or ():
    roots[name] = str(pathlib.Path(config.data.check_root) / name)
  return roots


def report_configs(config):
  """`{name: config}`: per report set, a copy of `config` that reads that set's root
  and never synthesises it. Each set is the test split of its copy."""
  result = {}
  for name, root in report_roots(config).items():
    copy = config.copy_and_resolve_references()
    copy.data.root, copy.data.synthesize_if_missing = root, False
    result[name] = copy
  return result


def ensure_report_sets(config, progress=True):
  """Makes the demo corpus, the held-out voices and the check sets `config` names,
  where missing, if `config.data.synthesize_if_missing`; else does nothing."""
  if not config.data.synthesize_if_missing:
    return
  rate, sources = config.model.sample_rate, config.model.num_sources
  roots = report_roots(config)
  synth.ensure_demo_corpus(
    roots.pop(TEST_SET), sample_rate=rate, num_sources=sources, progress=progress
  )
  if HELDOUT_SET in roots:
    synth.ensure_heldout_corpus(
      roots.pop(HELDOUT_SET), sample_rate=rate, num_sources=sources, progress=progress
    )
  for name, root in roots.items():
    # The Kokoro sets' size is the config's; the recorded set has its own.
    checksets.ensure_check_set(
      name,
      root,
      sample_rate=rate,
      num_mixtures=None if name == "recorded" else config.data.check_mixtures,
      progress=progress,
    )
