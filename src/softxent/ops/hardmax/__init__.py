"""hardmax."""
