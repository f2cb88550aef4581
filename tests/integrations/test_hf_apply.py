"""softxent.integrations.transformers.apply / remove against the stock Hugging Face models.

Each family is a tiny random-weight model built from its config (nothing comes from a model hub). The
oracles: the stock model itself (its own loss, computed by transformers in float32), and in float64 the
stock model's logits (forward without labels) with torch's cross-entropy in float64, since transformers
upcasts the logits to float32 only, which would hide float64 errors. initializer_range=0.2 makes the
logits O(1), so Gemma's soft-cap (set to 2.0) bends them and a missing cap fails the test.
"""

from __future__ import annotations

import copy
import functools
import os
import types

os.environ["HF_HUB_OFFLINE"] = "1"  # tests build models from configs; never reach a hub

import pytest
import torch

transformers = pytest.importorskip("transformers")

from compare import assert_close  # noqa: E402
from softxent.integrations import transformers as sxhf  # noqa: E402

VOCAB = 97  # odd: no power-of-two chunking luck
COMMON = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=64, initializer_range=0.2, pad_token_id=0,
              bos_token_id=1, eos_token_id=2, attn_implementation="eager")

FAMILIES = {
    "llama": lambda: transformers.LlamaForCausalLM(transformers.LlamaConfig(**COMMON)),
    "llama-tied": lambda: transformers.LlamaForCausalLM(transformers.LlamaConfig(**COMMON, tie_word_embeddings=True)),
    "llama-head-bias": lambda: _with_head_bias(transformers.LlamaForCausalLM(transformers.LlamaConfig(**COMMON))),
    "mistral": lambda: transformers.MistralForCausalLM(transformers.MistralConfig(**COMMON)),
    "qwen2": lambda: transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**COMMON)),
    "qwen3": lambda: transformers.Qwen3ForCausalLM(transformers.Qwen3Config(**COMMON, head_dim=8)),
    "gemma2": lambda: transformers.Gemma2ForCausalLM(
        transformers.Gemma2Config(**COMMON, head_dim=8, final_logit_softcapping=2.0)),
    "gemma3-text": lambda: transformers.Gemma3ForCausalLM(
        transformers.Gemma3TextConfig(**COMMON, head_dim=8, final_logit_softcapping=2.0)),
    "phi3": lambda: transformers.Phi3ForCausalLM(transformers.Phi3Config(**COMMON)),
}
TIED = {"llama-tied", "gemma2", "gemma3-text"}  # Gemma ties by default


def _with_head_bias(model):
    """The standard forward with a biased nn.Linear head: linear_bias must reach the loss and get its gradient."""
    head = torch.nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=True)
    with torch.no_grad():
        head.weight.copy_(model.lm_head.weight)
        head.bias.normal_(0.0, 0.5)
    model.lm_head = head
    return model


def build(family: str, dtype=torch.float64, seed: int = 0):
    """(applied, stock): the same random weights; the stock one is a deep copy taken before apply."""
    torch.manual_seed(seed)
    model = FAMILIES[family]().to(dtype)
    stock = copy.deepcopy(model)
    return sxhf.apply(model), stock


def batch(batch_size: int = 3, length: int = 9, seed: int = 1):
    """ids, an attention mask with a padded tail on row 1, and labels with -100 on the pad and a prompt."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (batch_size, length), generator=g)
    mask = torch.ones(batch_size, length, dtype=torch.long)
    mask[1, -3:] = 0
    labels = ids.clone()
    labels[mask == 0] = -100
    labels[0, :4] = -100  # a prompt that is not trained on
    return ids, mask, labels


def reference_loss(stock, ids, mask, labels, num_items=None):
    """The stock model's causal-LM loss with the cross-entropy in the model's own dtype (float64 stays float64)."""
    logits = stock(input_ids=ids, attention_mask=mask).logits
    vocab = logits.shape[-1]
    rows, targets = logits[:, :-1].reshape(-1, vocab), labels[:, 1:].reshape(-1)
    if num_items is None:
        return torch.nn.functional.cross_entropy(rows, targets)
    return torch.nn.functional.cross_entropy(rows, targets, reduction="sum") / num_items


def gradients(model) -> dict:
    return {name: p.grad for name, p in model.named_parameters() if p.requires_grad}


def assert_same_gradients(actual: dict, expected: dict, dtype: str, scale: float = 1.0):
    assert actual.keys() == expected.keys()
    for name in expected:
        assert actual[name] is not None, f"{name}: no gradient"
        assert_close(actual[name], expected[name], dtype=dtype, what=f"gradient of {name}", scale=scale)


UPSTREAM = 0.37  # a non-unit upstream gradient: the backward must scale, not assume 1


@pytest.mark.parametrize("family", FAMILIES)
def test_loss_and_gradients_equal_stock_float64(family):
    model, stock = build(family)
    # tied: the head's weight is the embedding's parameter, whose gradient gets both contributions
    assert (model.lm_head.weight is model.model.embed_tokens.weight) == (family in TIED)
    ids, mask, labels = batch()
    out = model(input_ids=ids, attention_mask=mask, labels=labels)
    assert out.logits is None
    assert out.loss.dtype == torch.float64
    (out.loss * UPSTREAM).backward()
    expected = reference_loss(stock, ids, mask, labels)
    (expected * UPSTREAM).backward()
    # float64 throughout on both sides; a few rounding steps through the decoder's backward
    assert_close(out.loss, expected, what="loss")
    assert_same_gradients(gradients(model), gradients(stock), "float64", scale=10)
    # and the stock model's own loss (transformers computes it from float32 logits)
    stock_loss = stock(input_ids=ids, attention_mask=mask, labels=labels).loss
    assert_close(out.loss, stock_loss.double(), dtype="float32", what="loss vs the stock model's own", scale=5)


# (loss rtol, gradient tolerance relative to each gradient's largest entry). float32: both sides round the
# logits alike, the orders of summation differ. bf16: softxent's loss is rounded once to bf16 (a relative
# 2**-8 at worst) before it comes back as float32; the gradients differ where transformers soft-caps in
# bf16 (Gemma) and softxent in float32, and where softxent scales its bf16 gradients by the upstream gradient
# (one more rounding, which the decoder's bf16 backward grows in small, cancelling entries: attention biases)
CLOSE = {torch.float32: (1e-6, 4e-6), torch.bfloat16: (4e-3, 5e-2)}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("family", FAMILIES)
def test_loss_and_gradients_close_to_stock(family, dtype):
    model, stock = build(family, dtype)
    ids, mask, labels = batch()
    out = model(input_ids=ids, attention_mask=mask, labels=labels)
    expected = stock(input_ids=ids, attention_mask=mask, labels=labels)
    assert out.logits is None
    assert out.loss.dtype == expected.loss.dtype == torch.float32  # transformers' loss dtype for every model dtype
    (out.loss * UPSTREAM).backward()
    (expected.loss * UPSTREAM).backward()
    loss_rtol, grad_rtol = CLOSE[dtype]
    torch.testing.assert_close(out.loss, expected.loss, rtol=loss_rtol, atol=0.0)
    for name, grad in gradients(stock).items():
        ours = gradients(model)[name]
        error = (ours.float() - grad.float()).abs().max().item()
        size = grad.float().abs().max().item()
        assert error <= grad_rtol * size + 1e-30, f"gradient of {name} ({dtype}): max error {error:.3g}, largest {size:.3g}"


@pytest.mark.parametrize("family", FAMILIES)
def test_without_labels_outputs_unchanged_and_remove_restores(family):
    model, stock = build(family, torch.float32)
    ids, mask, labels = batch()
    for kwargs in ({}, {"logits_to_keep": 1}, {"return_dict": False}):
        ours, theirs = model(input_ids=ids, attention_mask=mask, **kwargs), stock(input_ids=ids, attention_mask=mask,
                                                                                 **kwargs)
        assert torch.equal(ours[0], theirs[0]), f"logits differ without labels ({kwargs})"
    generated = model.generate(ids[:1, :5], max_new_tokens=3, do_sample=False)
    assert torch.equal(generated, stock.generate(ids[:1, :5], max_new_tokens=3, do_sample=False))

    assert sxhf.remove(model) is model
    assert "forward" not in vars(model)
    restored = model(input_ids=ids, attention_mask=mask, labels=labels)
    expected = stock(input_ids=ids, attention_mask=mask, labels=labels)
    assert restored.logits is not None and torch.equal(restored.logits, expected.logits)
    assert torch.equal(restored.loss, expected.loss)


def test_num_items_in_batch_micro_batches_sum_to_the_global_mean():
    model, stock = build("llama")
    ids, mask, labels = batch(batch_size=4)
    num_items = int((labels[:, 1:] != -100).sum())  # what Trainer counts: the shifted labels
    parts = []
    for rows in (slice(0, 1), slice(1, 4)):  # uneven micro-batches: a local mean would weigh them wrongly
        out = model(input_ids=ids[rows], attention_mask=mask[rows], labels=labels[rows],
                    num_items_in_batch=torch.tensor(num_items))
        parts.append(out.loss)
    total = parts[0] + parts[1]
    (total * UPSTREAM).backward()
    whole = reference_loss(stock, ids, mask, labels)
    (whole * UPSTREAM).backward()
    assert_close(total, whole, what="sum over micro-batches vs the global mean")
    assert_same_gradients(gradients(model), gradients(stock), "float64", scale=10)
    # the stock model with the same num_items_in_batch (transformers: sum / num_items_in_batch)
    stock_part = stock(input_ids=ids[:1], attention_mask=mask[:1], labels=labels[:1], num_items_in_batch=num_items).loss
    assert_close(parts[0], stock_part.double(), dtype="float32", what="micro-batch loss vs stock", scale=5)


def test_shift_labels_ignore_index_and_logits_to_keep_as_stock():
    model, stock = build("llama")
    ids, mask, labels = batch()
    # shift_labels taken as they are, with another ignore_index; logits_to_keep=4 keeps the last 4 positions
    shift = labels[:, -4:].clone()
    shift[shift == -100] = 5
    shift[2, 1] = 5
    kwargs = dict(input_ids=ids, attention_mask=mask, labels=labels, shift_labels=shift, ignore_index=5,
                  logits_to_keep=4)
    ours, theirs = model(**kwargs), stock(**kwargs)
    assert ours.logits is None
    assert_close(ours.loss, theirs.loss.double(), dtype="float32", what="loss", scale=5)
    logits = stock(input_ids=ids, attention_mask=mask, logits_to_keep=4).logits
    expected = torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), shift.reshape(-1), ignore_index=5)
    assert_close(ours.loss, expected, what="loss vs float64 reference")


def test_logits_to_keep_mismatching_labels_raises_valueerror():
    model, _ = build("llama")
    ids, mask, labels = batch()
    with pytest.raises(ValueError, match="logits_to_keep"):
        model(input_ids=ids, attention_mask=mask, labels=labels, logits_to_keep=2)


def test_positional_labels_tuple_output_and_no_logits_from_the_head():
    model, stock = build("qwen3")
    ids, mask, labels = batch()
    shapes = []
    model.lm_head.register_forward_hook(lambda module, args, output: shapes.append(tuple(output.shape)))
    # LlamaForCausalLM-style order: input_ids, attention_mask, position_ids, cache, inputs_embeds, labels
    out = model(ids, mask, None, None, None, labels, return_dict=False)
    assert shapes == [(3, 9, 0)], "the head produced logits"
    expected = reference_loss(stock, ids, mask, labels)
    assert_close(out[0], expected, what="loss (first in the tuple)")
    assert not any(isinstance(t, torch.Tensor) and t.shape[-1:] == (VOCAB,) for t in out), "logits in the tuple"


def test_chunk_size_apply_twice_and_deepcopy():
    model, stock = build("gemma2")
    ids, mask, labels = batch()
    expected = reference_loss(stock, ids, mask, labels)
    assert sxhf.apply(model, chunk_size=5) is model  # again: only the chunk size changes, no second wrapper
    assert model.forward.__func__.__wrapped__ is type(model).forward
    assert_close(model(input_ids=ids, attention_mask=mask, labels=labels).loss, expected, what="chunk_size=5")
    twin = copy.deepcopy(model)  # the copy's forward must be bound to the copy, not to the original
    with torch.no_grad():
        twin.lm_head.weight.mul_(0.5)
    assert twin.forward.__self__ is twin
    assert_close(model(input_ids=ids, attention_mask=mask, labels=labels).loss, expected, what="original after copy")
    assert twin(input_ids=ids, attention_mask=mask, labels=labels).loss.item() != pytest.approx(expected.item())
    with pytest.raises(ValueError, match="chunk_size"):
        sxhf.apply(model, chunk_size=0)


def test_remove_on_a_model_never_applied_is_a_no_op():
    torch.manual_seed(0)
    model = FAMILIES["llama"]()
    assert sxhf.remove(model) is model and "forward" not in vars(model)
    with pytest.raises(TypeError, match="model"):
        sxhf.remove("not a model")


def _tiny(config_class, model_class, **extra):
    torch.manual_seed(0)
    return model_class(config_class(**COMMON, **extra))


@pytest.mark.parametrize("make, reason", [
    (lambda: torch.nn.Linear(3, 4), "Linear"),
    (lambda: transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=1, n_head=4)),
     "GPT2LMHeadModel.*not a \\*ForCausalLM"),
    (lambda: _tiny(transformers.CohereConfig, transformers.CohereForCausalLM), "CohereForCausalLM.*logit_scale"),
    (lambda: _tiny(transformers.GraniteConfig, transformers.GraniteForCausalLM), "GraniteForCausalLM.*logits_scaling"),
    (lambda: _tiny(transformers.MixtralConfig, transformers.MixtralForCausalLM, num_local_experts=2,
                   num_experts_per_tok=1), "MixtralForCausalLM.*aux_loss"),
], ids=["nn.Linear", "gpt2", "cohere", "granite", "mixtral"])
def test_unsupported_models_raise_typeerror_naming_the_class(make, reason):
    model = make()
    with pytest.raises(TypeError, match=reason):
        sxhf.apply(model)
    assert "forward" not in vars(model)


def test_custom_loss_function_or_head_raises_typeerror():
    model = FAMILIES["llama"]()
    model.loss_function = lambda *args, **kwargs: torch.zeros(())
    with pytest.raises(TypeError, match="LlamaForCausalLM.*loss_function"):
        sxhf.apply(model)
    model = sxhf.apply(FAMILIES["llama"]())
    model.lm_head = torch.nn.Sequential(model.lm_head)  # the head changed after apply: refused, never bypassed
    ids, mask, labels = batch()
    with pytest.raises(TypeError, match="lm_head became Sequential"):
        model(input_ids=ids, labels=labels)


def _instance_wrapper(model, calls):
    """An instance-level forward over the current one, as accelerate installs for autocast."""
    inner = model.forward

    def forward(self, *args, **kwargs):
        calls.append("labels" in kwargs and kwargs["labels"] is not None)
        return inner(*args, **kwargs)

    return types.MethodType(functools.wraps(inner.__func__)(forward), model)


def test_instance_forwards_installed_before_or_after_apply_are_kept():
    ids, mask, labels = batch()
    # before apply: softxent wraps it (it still runs, with labels removed) and remove puts it back
    model, stock = build("phi3")
    calls = []
    model = sxhf.remove(model)
    model.forward = wrapper = _instance_wrapper(model, calls)
    sxhf.apply(model)
    out = model(input_ids=ids, attention_mask=mask, labels=labels)
    assert out.logits is None and calls == [False]
    assert_close(out.loss, reference_loss(stock, ids, mask, labels), what="loss through the wrapper")
    assert sxhf.remove(model).forward is wrapper
    # after apply: remove leaves the outer wrapper, and the softxent layer under it passes through
    model, stock = build("phi3")
    model.forward = _instance_wrapper(model, calls)
    sxhf.remove(model)
    out = model(input_ids=ids, attention_mask=mask, labels=labels)
    assert out.logits is not None
    assert torch.equal(out.loss, stock(input_ids=ids, attention_mask=mask, labels=labels).loss)
    # and apply again switches the layer under the wrapper back on (no second layer, no recursion)
    out = sxhf.apply(model)(input_ids=ids, attention_mask=mask, labels=labels)
    assert out.logits is None
    assert_close(out.loss, reference_loss(stock, ids, mask, labels), what="loss after remove and apply")
