"""logsumexp."""
