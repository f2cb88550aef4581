"""The ops of softxent, one folder each: the math in the folder's docstring, then one module per layer.

``numpy.py`` (the readable reference), ``torch.py`` (autograd and dispatch), ``torch_cpu.py`` (the CPU kernel),
``triton.py`` (the CUDA kernels), ``distributed.py`` (vocab-parallel); ``spec.py`` holds the rules every layer
shares, written once over an array namespace.
"""
