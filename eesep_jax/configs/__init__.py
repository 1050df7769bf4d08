"""Experiment configs that ship with the package, so that they run from any directory:
`eesep demo` trains `demo.py`, and `eesep train --config demo` names it by its stem
(`config_lib.resolve`, which finds them by path: they import `config_lib`)."""
