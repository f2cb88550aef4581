"""Knowledge distillation: a divergence between the teacher's and the student's softmax, per row.

With scores u = student / T and v = teacher / T, each after its own max shift (the cross-entropy
family's order, `softxent.ops.cross_entropy.spec.transformed_scores`), q = softmax(u), p = softmax(v),
and the log-probabilities taken from the shifted scores, ``log q_j = d^u_j - L^u`` (never log of a
rounded probability):

    "kl"          KL(p || q) = sum_j p_j (log p_j - log q_j)            d/du_j = q_j - p_j
    "reverse_kl"  KL(q || p) = sum_j q_j (log q_j - log p_j)            d/du_j = q_j (log q_j - log p_j - KL)
    "jsd"         beta KL(p || m) + (1 - beta) KL(q || m),  m = beta p + (1 - beta) q
                  d/du_j = q_j (g_j - sum_k q_k g_k),  g_j = (1 - beta) (log q_j - log m_j)

with log m = logaddexp(log beta + log p, log(1 - beta) + log q) (no underflow of small probabilities),
and 0 log 0 = 0 wherever a probability is 0 (a -inf logit, a mask). The loss of a row is the divergence
times T^2 (Hinton et al. 2015: the gradients keep their size as T changes), so the student's logit
gradient is ``T * d/du``. Gradients flow to the student only: the teacher is a constant. Rows whose
`target` is `ignore_index` give 0 and a zero gradient and are not counted by "mean", which divides by
the rows counted (all of them without a target) or by `num_items` (`spec.row_denominator`); a row whose
student or teacher logits are all -inf gives 0 (rule 2).

Layers: `numpy.py` (the reference, with its gradient), `torch.py` (autograd on the row kernels:
`torch_cpu.py` on the CPU and anywhere without Triton, `triton.py` on CUDA). Each holds the plain form and
the linear one, which computes both heads chunk by chunk.
"""
