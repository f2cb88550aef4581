"""PyTorch plumbing shared by the ops: backend choice, threads, memory, matmul, collectives."""
