"""nri_modular: neural relational inference as modular meta-learning, in JAX."""
