"""entropy and KL divergence of probability vectors, with 0 log 0 = 0.

    H(p) = -sum_j p_j log p_j          KL(p || q) = sum_j p_j log(p_j / q_j)

so that cross-entropy between distributions is H(p, q) = H(p) + KL(p || q). Start with numpy.py.
"""
