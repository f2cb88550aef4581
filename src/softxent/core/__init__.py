"""The NumPy layer: the readable specification of every loss, and the CPU path."""
