"""Core maths: likelihoods and exit probabilities, losses, metrics, the permutation
search and the stopping rule. Pure JAX: no file I/O, no scipy."""
