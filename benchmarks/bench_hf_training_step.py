"""One training step of a Hugging Face causal LM on the CPU: the stock model beside softxent's `apply`.

The model is a tiny Llama (hidden 256, 2 layers) with Llama 3's vocabulary (V = 128256), so the head and
its loss dominate, as they do for real models at long sequence lengths: the stock forward holds the
(tokens, V) float32 logits, and its loss a log-softmax and a gradient of the same size, while softxent's
`linear_cross_entropy` holds one chunk of them. A step is the forward with labels and the backward; the
gradients are dropped after it (counted in the peak, as an optimizer step would hold them too).

Each provider runs in a fresh process (harness.py); the weights are built from the same seed in both.
Peak extra memory is over the model's weights. `logits_bytes` = tokens * V * 4 is the size of one copy
of the stock logits, for scale.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the model is built from its config; no hub

import torch

from harness import Unavailable, main

CASES = {"llama-h256-v128256-4x1024-float32": {"batch": 4, "length": 1024, "hidden": 256, "layers": 2,
                                               "vocab": 128256, "dtype": "float32"}}
QUICK = {"llama-h64-v4096-2x128-float32": {"batch": 2, "length": 128, "hidden": 64, "layers": 1, "vocab": 4096,
                                           "dtype": "float32"}}


def _model_and_batch(case):
    try:
        import transformers
    except ImportError as error:
        raise Unavailable("transformers is not installed (pip install 'softxent[transformers]')") from error
    torch.manual_seed(0)
    hidden = case["hidden"]
    config = transformers.LlamaConfig(vocab_size=case["vocab"], hidden_size=hidden, intermediate_size=4 * hidden,
                                      num_hidden_layers=case["layers"], num_attention_heads=hidden // 64,
                                      num_key_value_heads=hidden // 64, max_position_embeddings=case["length"],
                                      attn_implementation="sdpa")
    model = transformers.LlamaForCausalLM(config).to(getattr(torch, case["dtype"])).train()
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, case["vocab"], (case["batch"], case["length"]), generator=g)
    return model, ids


def _runner(model, ids):
    def run():
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        model.zero_grad(set_to_none=True)  # counted in the peak, not in the next call's baseline
        return loss.detach()

    return run


def make_softxent(case, device):
    if device != "cpu":
        raise Unavailable("this benchmark runs on the CPU")
    from softxent.integrations import transformers as sxhf

    model, ids = _model_and_batch(case)
    return _runner(sxhf.apply(model), ids)


def make_stock(case, device):
    if device != "cpu":
        raise Unavailable("this benchmark runs on the CPU")
    model, ids = _model_and_batch(case)
    return _runner(model, ids)


def describe(case, row):
    tokens = case["batch"] * case["length"]
    return {"tokens": tokens, "logits_bytes": tokens * case["vocab"] * 4,
            "tokens_per_s": tokens / row["time_s"]}


if __name__ == "__main__":
    main("hf_training_step", CASES, QUICK, {"softxent": make_softxent, "stock": make_stock}, describe=describe)
