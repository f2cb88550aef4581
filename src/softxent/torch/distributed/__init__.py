"""Vocab-parallel losses on torch.distributed: the vocabulary split across ranks, never gathered.

Import as ``import softxent.torch.distributed as sxd``. Works on any process group (gloo on the CPU,
NCCL on GPUs). Each rank holds a contiguous slice of the vocabulary, in rank order, of any size; the
losses equal the single-process losses on the full vocabulary, and each rank gets the gradient of its
slice. Communication is O(rows): see each function's docstring for the exact volume.
"""

from softxent._torch.collectives import CollectiveError
from softxent.ops.cross_entropy.distributed import global_num_items, vocab_parallel_cross_entropy
from softxent.ops.linear_cross_entropy.distributed import vocab_parallel_linear_cross_entropy
from softxent.ops.token_log_probs.distributed import vocab_parallel_token_log_probs

__all__ = ["CollectiveError", "vocab_parallel_cross_entropy", "vocab_parallel_linear_cross_entropy",
           "vocab_parallel_token_log_probs", "global_num_items"]
