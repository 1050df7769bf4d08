"""Data: the embedded eSpeak corpus, readers for the standard corpora, input pipelines.

    source = data.open_dataset("wsj0-mix", "/data/wsj0-mix/2speakers/wav8k/min", "tr",
                               sample_rate=8000)
    loader = data.training_loader(source, batch_size=16, segment_seconds=4.0, seed=0)
    data.synthesize_corpus("data/demo")          # or `eesep data synth --out data/demo`

Names are imported on first use, so `import eesep_jax.data` (and `eesep --help`)
does not load grain and JAX; the readers and the synthesiser never need them.
"""

import importlib

_EXPORTS = {
  "AudioError": "audio",
  "DatasetError": "audio",
  "read_audio": "audio",
  "MixtureSource": "readers",
  "READERS": "readers",
  "open_dataset": "readers",
  "synthesize_corpus": "synth",
  "ensure_demo_corpus": "synth",
  "ensure_heldout_corpus": "synth",
  "CHECK_SETS": "checksets",
  "ensure_check_set": "checksets",
  "make_check_set": "checksets",
  "TEST_SET": "report_sets",
  "HELDOUT_SET": "report_sets",
  "report_configs": "report_sets",
  "ensure_report_sets": "report_sets",
  "Augmentation": "augment",
  "training_loader": "pipeline",
  "evaluation_batches": "pipeline",
  "pad_batch": "pipeline",
  "open_split": "pipeline",
  "training_source": "pipeline",
  "validation_batches": "pipeline",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
  if name not in _EXPORTS:
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
  return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)


def __dir__():
  return sorted(list(globals()) + __all__)
