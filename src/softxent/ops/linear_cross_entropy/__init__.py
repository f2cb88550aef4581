"""linear_cross_entropy."""
