"""`python -m eesep_jax` runs the `eesep` command."""

from eesep_jax.app import cli

if __name__ == "__main__":
  cli.main()
