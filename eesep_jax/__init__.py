"""eesep_jax: speech separation networks with probabilistic early exits."""

__version__ = "0.1.0"
