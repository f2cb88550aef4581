"""Triton plumbing shared by the kernels: launch configuration, the on-device label check, row math."""
