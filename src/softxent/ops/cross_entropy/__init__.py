"""cross_entropy."""
