"""Experiment configs that ship with the package (`eesep demo` runs `demo.py`)."""
