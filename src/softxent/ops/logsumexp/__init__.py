"""log-sum-exp: log(sum_j b_j exp(x_j)) along an axis, without overflow and exact to the last bit.

    lse(x) = m + log1p(sum_{j != argmax} exp(x_j - m)),     m = max_j x_j

numpy.py also holds the row kernel (`shift_rows`, `exp_log_sum`) that softmax, log-softmax and
cross-entropy share, with the limits of fully masked (-inf) and +inf rows. Its gradient is softmax(x).
Blanchard, Higham & Higham 2021, "Accurately computing the log-sum-exp and softmax functions".

Start with numpy.py; torch.py and jax.py follow it.
"""
