"""A transformers Trainer run with softxent applied gives the stock model's loss curve, step by step.

Tiny Llama (random weights from its config, nothing from a hub), a short synthetic corpus whose rows have
different numbers of trained tokens, gradient_accumulation_steps=4: the micro-batches' losses must be
normalized by Trainer's num_items_in_batch (the global count), or the curve drifts from the stock one.
"""

from __future__ import annotations

import copy
import os

os.environ["HF_HUB_OFFLINE"] = "1"  # tests build models from configs; never reach a hub

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")  # Trainer needs it

from softxent.integrations import transformers as sxhf  # noqa: E402

VOCAB, LENGTH, ROWS = 131, 12, 48
STEPS, ACCUMULATION, BATCH = 5, 4, 2


class Corpus(torch.utils.data.Dataset):
    """Rows of a learnable sequence (each token a fixed function of the one before, from a random start),
    right-padded to LENGTH with a random number of pad tokens (labels -100 there)."""

    def __init__(self, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.empty(ROWS, LENGTH, dtype=torch.long)
        self.ids[:, 0] = torch.randint(3, VOCAB, (ROWS,), generator=g)
        for t in range(1, LENGTH):
            self.ids[:, t] = (self.ids[:, t - 1] * 5 + 1) % (VOCAB - 3) + 3
        lengths = torch.randint(3, LENGTH + 1, (ROWS,), generator=g)
        self.mask = (torch.arange(LENGTH) < lengths[:, None]).long()
        self.ids[self.mask == 0] = 0
        self.labels = self.ids.masked_fill(self.mask == 0, -100)

    def __len__(self):
        return ROWS

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "attention_mask": self.mask[i], "labels": self.labels[i]}


def train(model, folder, steps=STEPS, **options):
    args = transformers.TrainingArguments(
        output_dir=str(folder), per_device_train_batch_size=BATCH, gradient_accumulation_steps=ACCUMULATION,
        max_steps=steps, learning_rate=1e-2, logging_steps=1, seed=0, use_cpu=True, report_to="none",
        save_strategy="no", disable_tqdm=True, dataloader_num_workers=0, lr_scheduler_type="constant", **options)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=Corpus())
    # the Trainer passes num_items_in_batch to the model (it reads **kwargs from the wrapped signature)
    assert trainer.model_accepts_loss_kwargs
    trainer.train()
    return [entry for entry in trainer.state.log_history if "loss" in entry]


def tiny_llama():
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                      pad_token_id=0, bos_token_id=1, eos_token_id=2, attn_implementation="eager")
    return transformers.LlamaForCausalLM(config)


def test_trainer_loss_curve_equals_stock_with_gradient_accumulation(tmp_path):
    stock = tiny_llama()
    applied = sxhf.apply(copy.deepcopy(stock))
    head_widths = []
    applied.lm_head.register_forward_hook(lambda module, args, output: head_widths.append(output.shape[-1]))

    expected = train(stock, tmp_path / "stock")
    actual = train(applied, tmp_path / "softxent")

    assert head_widths and set(head_widths) == {0}, "the applied model's head computed logits in training"
    assert len(actual) == len(expected) == STEPS
    for step, (ours, theirs) in enumerate(zip(actual, expected), 1):
        # float32 on both sides; Adam carries the rounding differences from step to step
        assert ours["loss"] == pytest.approx(theirs["loss"], rel=2e-5), f"step {step}: loss"
        assert ours["grad_norm"] == pytest.approx(theirs["grad_norm"], rel=1e-4), f"step {step}: grad_norm"
    # the curve moves (learning happens), so equal curves are not two flat lines
    assert expected[-1]["loss"] < expected[0]["loss"] - 0.05
    for (name, p), q in zip(applied.named_parameters(), stock.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6, msg=f"{name} after training")


def test_trainer_bf16_autocast_with_activation_checkpointing_stays_close(tmp_path):
    """bf16=True on the CPU (accelerate wraps the applied forward in autocast) and checkpointed layers."""
    stock = tiny_llama()
    applied = sxhf.apply(copy.deepcopy(stock))
    head_widths = []
    applied.lm_head.register_forward_hook(lambda module, args, output: head_widths.append(output.shape[-1]))
    options = dict(steps=3, bf16=True, activation_checkpointing=True)
    expected = train(stock, tmp_path / "stock", **options)
    actual = train(applied, tmp_path / "softxent", **options)
    assert head_widths and set(head_widths) == {0}, "the applied model's head computed logits in training"
    assert len(actual) == len(expected) == 3
    for step, (ours, theirs) in enumerate(zip(actual, expected), 1):
        # under autocast both heads run in bf16; softxent's loss is rounded once to bf16 (2**-8 relative)
        assert ours["loss"] == pytest.approx(theirs["loss"], rel=1e-2), f"step {step}: loss"
