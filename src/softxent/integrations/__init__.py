"""One-call use of softxent inside the frameworks people train with.

- `softxent.integrations.transformers`: ``apply(model)`` makes one Hugging Face causal LM compute its
  training loss with `softxent.torch.linear_cross_entropy` (never holding the (tokens, vocab) logits);
  ``remove(model)`` restores it. Needs the `transformers` extra (``pip install 'softxent[transformers]'``).

Nothing is imported here: each integration is imported on its own, with its framework.
"""
