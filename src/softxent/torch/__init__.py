"""The PyTorch layer: drop-in losses for torch.nn.functional, fused and memory-lean.

Import as ``import softxent.torch as sxt``. Needs the `torch` extra.
"""
