"""Shared plumbing of the JAX layer (softxent.jax): array checks, class axes as rows, work dtypes."""
