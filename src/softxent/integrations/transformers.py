"""Hugging Face transformers: one causal LM instance trains with softxent's fused linear cross-entropy.

``apply(model)`` makes the model's training loss (the forward with ``labels``) come from
`softxent.torch.linear_cross_entropy` on the final hidden states and the ``lm_head`` weight, so the
(tokens, vocab) logits are never materialized; ``remove(model)`` restores the stock forward. Both act on
that instance only: its ``forward`` attribute is set (and deleted again); no class or module of
transformers is patched.

How the hook works: the wrapped forward runs the model's own forward *without* labels, with the
instance's ``lm_head`` answering a zero-width placeholder instead of the logits, and keeps the hidden
states the head received (already sliced by ``logits_to_keep``). It then computes the stock causal-LM
loss from them: labels shifted by one position (or the caller's ``shift_labels``), ``ignore_index``
(default -100), ``num_items_in_batch`` as softxent's ``num_items`` (the sum over micro-batches is then
the mean over the global batch, as in transformers' ``ForCausalLMLoss``), Gemma's
``final_logit_softcapping`` as ``softcap``. Tied embeddings need nothing: the head's weight *is* the
embedding's parameter, so its gradient accumulates into it.

Which models: a ``*ForCausalLM`` whose forward follows the standard layout, read from its source at
``apply`` (``logits = self.lm_head(...)``, optionally soft-capped with ``final_logit_softcapping``, then
``loss = self.loss_function(...)`` and the return): Llama, Mistral, Qwen2/2.5/3, Gemma 2, Gemma 3
(text), Phi-3 and the other families that share it. Anything else (a scaled or cut head such as
Cohere's or Granite's, an auxiliary router loss, a custom ``loss_function``, a head that is not an
``nn.Linear``) raises TypeError at ``apply``, naming the class and the reason.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import inspect
import textwrap
import types
from dataclasses import dataclass

try:
    import torch
    from torch import nn
    import transformers
    from transformers.loss.loss_utils import LOSS_MAPPING
except ImportError as err:  # pragma: no cover - exercised only where the extra is missing
    raise ImportError("softxent.integrations.transformers needs transformers: "
                      "pip install 'softxent[transformers]'") from err

from softxent import _validation as v
from softxent.ops.linear_cross_entropy.torch import linear_cross_entropy

__all__ = ["apply", "remove"]

# the instance attribute holding the applied state (present exactly while applied)
_STATE = "_softxent_state"
_SUPPORTED = "the standard *ForCausalLM layout with an nn.Linear lm_head (Llama, Mistral, Qwen2/3, Gemma 2/3, Phi-3, ...)"


@dataclass
class _State:
    chunk_size: int | None
    previous: object  # the instance's own forward before apply (e.g. accelerate's autocast wrapper), or None
    labels_position: int | None  # index of `labels` among the forward's positional parameters
    softcap: bool  # the forward soft-caps the logits with config.final_logit_softcapping
    active: bool = True


def apply(model, *, chunk_size: int | None = None):
    """Make one Hugging Face causal LM compute its training loss with softxent, in place; returns the model.

    With ``labels``, the forward returns the stock causal-LM loss computed by
    `softxent.torch.linear_cross_entropy` from the final hidden states ``h`` and the head ``(W, b)``:

    .. math::
        \\mathrm{loss} = \\frac{1}{n} \\sum_{t:\\, y_{t+1} \\ne -100}
            \\Big(\\operatorname{logsumexp}_j z_{t,j} - z_{t, y_{t+1}}\\Big),
        \\qquad z_t = c \\tanh\\big((W h_t + b) / c\\big)

    where ``y`` are the labels (position t predicts token t + 1; the caller's ``shift_labels`` are used
    as they are), ``c`` is ``config.final_logit_softcapping`` (Gemma 2/3; no cap elsewhere) and ``n`` is
    ``num_items_in_batch`` when given, else the number of counted tokens. ``outputs.logits`` is then
    None: the (tokens, vocab) logits never exist, at most ``chunk_size`` rows of them at a time.
    Without ``labels`` (generation, evaluation) the forward is the stock one, untouched. Gradients
    equal the stock model's; the loss is float32 for 16-bit models, as transformers' loss.

    Args:
        model: a ``transformers`` ``*ForCausalLM`` following the standard layout (module docstring).
            Calling ``apply`` again only updates ``chunk_size``.
        chunk_size: rows (tokens) of logits computed at once; None chooses from the shapes and the free
            memory (`softxent.torch.linear_cross_entropy`).

    Returns:
        ``model`` itself.

    Raises:
        TypeError: the model is not a supported causal LM (the message names its class and why).
        ValueError: ``chunk_size`` is not a positive integer.

    Example:
        >>> import torch, transformers, softxent.integrations.transformers as sxhf
        >>> torch.manual_seed(0) and None
        >>> config = transformers.LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32,
        ...                                   num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1)
        >>> model = sxhf.apply(transformers.LlamaForCausalLM(config))
        >>> ids = torch.randint(0, 50, (2, 6))
        >>> out = model(input_ids=ids, labels=ids)
        >>> out.logits is None
        True
        >>> out.loss.backward()
        >>> stock = sxhf.remove(model)(input_ids=ids, labels=ids)  # the stock forward again
        >>> bool(torch.isclose(out.loss, stock.loss)), stock.logits.shape
        (True, torch.Size([2, 6, 50]))

    See also:
        `remove`; `softxent.torch.linear_cross_entropy` (the loss), `softxent.linear_cross_entropy`
        (the NumPy reference).

    References:
        Wijmans et al. 2024, "Cut your losses in large-vocabulary language models" (the loss without logits).
    """
    chunk_size = v.check_chunk_size(chunk_size)
    labels_position, softcap = _check_model(model)
    state = model.__dict__.get(_STATE)
    if state is not None:  # applied already: the wrapper is in place (perhaps under another one)
        state.chunk_size, state.active = chunk_size, True
        return model
    previous = model.__dict__.get("forward")
    model.__dict__[_STATE] = _State(chunk_size=chunk_size, previous=previous, labels_position=labels_position,
                                    softcap=softcap)
    # signature and docs of the forward it replaces: Trainer reads the parameter names (columns to keep,
    # "accepts loss kwargs" from **kwargs) through __wrapped__
    wrapped = previous.__func__ if isinstance(previous, types.MethodType) else type(model).forward
    model.forward = types.MethodType(_make_forward(wrapped), model)
    return model


def remove(model):
    """Undo `apply` on this instance: its forward is the stock one again (a model never applied is left as it is).

    Returns ``model``. If something wrapped the forward after `apply` (accelerate's autocast, for
    instance), that wrapper stays and the softxent layer under it becomes a pass-through.

    Example:
        >>> import torch, transformers, softxent.integrations.transformers as sxhf
        >>> config = transformers.Qwen2Config(vocab_size=40, hidden_size=16, intermediate_size=32,
        ...                                   num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1)
        >>> model = transformers.Qwen2ForCausalLM(config)
        >>> "forward" in vars(sxhf.remove(sxhf.apply(model)))
        False

    See also:
        `apply`.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module (a Hugging Face causal LM); got {type(model).__name__}")
    state = model.__dict__.get(_STATE)
    if state is None:
        return model
    state.active = False
    current = model.__dict__.get("forward")
    if current is not None and _is_ours(current):
        if state.previous is None:
            del model.forward
        else:
            model.forward = state.previous
        del model.__dict__[_STATE]
    # else another wrapper sits over softxent's: the state stays (inactive) for the layer under it to
    # read, and for a later apply to switch back on
    return model


# --- which models ----------------------------------------------------------------------------------------


def _check_model(model) -> tuple[int | None, bool]:
    """(position of labels, soft-capped) for a supported model; TypeError naming the class otherwise."""
    name = type(model).__name__
    if not isinstance(model, transformers.PreTrainedModel):
        raise TypeError(f"model must be a Hugging Face transformers *ForCausalLM model; got {name}")
    if not any(cls.__name__.endswith("ForCausalLM") for cls in type(model).__mro__):
        raise TypeError(f"{name} is not supported by softxent.integrations.transformers: it is not a *ForCausalLM "
                        f"model; supported: {_SUPPORTED}")
    head = getattr(model, "lm_head", None)
    if type(head) is not nn.Linear:
        raise TypeError(f"{name} is not supported by softxent.integrations.transformers: its lm_head is "
                        f"{type(head).__name__}, not an nn.Linear; supported: {_SUPPORTED}")
    if model.loss_function is not LOSS_MAPPING["ForCausalLM"]:
        raise TypeError(f"{name} is not supported by softxent.integrations.transformers: its loss_function is "
                        f"{getattr(model.loss_function, '__name__', model.loss_function)!r}, not transformers' "
                        f"ForCausalLMLoss; supported: {_SUPPORTED}")
    reason, softcap = _forward_layout(type(model).forward)
    if reason:
        raise TypeError(f"{name} is not supported by softxent.integrations.transformers: {reason}; "
                        f"supported: {_SUPPORTED}")
    parameters = inspect.signature(type(model).forward).parameters
    if "labels" not in parameters or not any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
        raise TypeError(f"{name} is not supported by softxent.integrations.transformers: its forward takes no "
                        f"`labels` and `**kwargs`; supported: {_SUPPORTED}")
    positional = [p for p in parameters if parameters[p].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]
    labels_position = positional.index("labels") - 1 if "labels" in positional else None  # -1: self
    return labels_position, softcap


def _forward_layout(forward) -> tuple[str | None, bool]:
    """(reason it is not the standard layout or None, soft-capped), from the forward's source.

    Standard: ``logits = self.lm_head(...)``, then only ``loss = None``, an optional
    ``if ...final_logit_softcapping...:`` block assigning ``logits``, and ``if labels is not None:
    loss = self.loss_function(...)``, then the return. Reading the source (rather than a list of class
    names) admits every family that shares the layout and refuses the ones that change the logits or the
    loss after the head, which would otherwise train on a silently different loss.
    """
    try:
        source = textwrap.dedent(inspect.getsource(inspect.unwrap(forward)))
        function = ast.parse(source).body[0]
    except (OSError, TypeError, SyntaxError, IndexError):
        return "its forward's source cannot be read to check its layout", False
    body = function.body
    heads = [i for i, s in enumerate(body) if _assigns(s, "logits") and _calls_self(s.value, "lm_head")]
    if len(heads) != 1:
        return "its forward does not compute `logits = self.lm_head(...)` once", False
    softcap = False
    for i, statement in enumerate(body[heads[0] + 1:], heads[0] + 1):
        if _assigns(statement, "loss") and isinstance(statement.value, ast.Constant) and statement.value.value is None:
            continue
        if (isinstance(statement, ast.If) and _mentions(statement.test, "final_logit_softcapping")
                and not statement.orelse and all(_assigns(s, "logits") for s in statement.body)):
            softcap = True
            continue
        if _is_labels_branch(statement):
            rest = body[i + 1:]
            if len(rest) == 1 and isinstance(rest[0], ast.Return):
                return None, softcap
            return f"its forward goes on after the loss (`{_line(rest[0]) if rest else ''}`)", softcap
        return f"its forward changes the logits or the loss after lm_head (`{_line(statement)}`)", softcap
    return "its forward computes no `loss = self.loss_function(...)` after lm_head", softcap


def _assigns(statement, name: str) -> bool:
    return (isinstance(statement, ast.Assign) and len(statement.targets) == 1
            and isinstance(statement.targets[0], ast.Name) and statement.targets[0].id == name)


def _calls_self(node, attribute: str) -> bool:
    return (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == attribute
            and isinstance(node.func.value, ast.Name) and node.func.value.id == "self")


def _mentions(node, attribute: str) -> bool:
    return any(isinstance(n, ast.Attribute) and n.attr == attribute for n in ast.walk(node))


def _is_labels_branch(statement) -> bool:
    """``if labels is not None: loss = self.loss_function(...)`` and nothing else."""
    if not isinstance(statement, ast.If) or statement.orelse or len(statement.body) != 1:
        return False
    test = statement.test
    if not (isinstance(test, ast.Compare) and isinstance(test.left, ast.Name) and test.left.id == "labels"
            and len(test.ops) == 1 and isinstance(test.ops[0], ast.IsNot)):
        return False
    (assignment,) = statement.body
    return _assigns(assignment, "loss") and _calls_self(assignment.value, "loss_function")


def _line(statement) -> str:
    text = ast.unparse(statement).splitlines()[0]
    return text if len(text) <= 80 else text[:77] + "..."


# --- the forward -----------------------------------------------------------------------------------------


def _make_forward(wrapped):
    def forward(self, *args, **kwargs):
        return _forward(self, args, kwargs)

    forward._softxent = True
    return functools.update_wrapper(forward, wrapped)


def _is_ours(method) -> bool:
    return getattr(getattr(method, "__func__", None), "_softxent", False)


def _forward(model, args, kwargs):
    state = model.__dict__.get(_STATE)
    inner = functools.partial(type(model).forward, model) if state is None or state.previous is None \
        else state.previous
    if state is None or not state.active:  # removed while another wrapper sat over this one
        return inner(*args, **kwargs)
    labels = kwargs.pop("labels", None)
    position = state.labels_position
    if labels is None and position is not None and len(args) > position:
        labels, args = args[position], args[:position] + (None,) + args[position + 1:]
    if labels is None:  # generation, evaluation without labels: the stock forward, untouched
        return inner(*args, **kwargs)
    # as transformers' can_return_tuple: the caller's return_dict, else the config's
    return_dict = kwargs.pop("return_dict", None)
    if return_dict is None:
        return_dict = getattr(model.config, "return_dict", True)
    head = model.lm_head
    if type(head) is not nn.Linear:  # replaced after apply (an adapter, a quantized layer)
        raise TypeError(f"{type(model).__name__}.lm_head became {type(head).__name__} after "
                        "softxent.integrations.transformers.apply; call remove(model) before changing the head")
    with _capturing(head) as captured:
        outputs = inner(*args, return_dict=True, **kwargs)
    if len(captured) != 1:
        raise RuntimeError(f"{type(model).__name__}'s forward called lm_head {len(captured)} times; "
                           "softxent.integrations.transformers expects one call")
    hidden, placeholder = captured[0]
    if not state.softcap and outputs.get("logits") is not placeholder:
        raise RuntimeError(f"{type(model).__name__}'s forward changed the logits after lm_head; "
                           "softxent.integrations.transformers cannot reproduce that loss")
    loss = _causal_lm_loss(model, hidden, labels, kwargs, state)
    fields = {key: value for key, value in outputs.items() if key not in ("loss", "logits")}
    result = type(outputs)(loss=loss, **fields)
    return result if return_dict else result.to_tuple()


@contextlib.contextmanager
def _capturing(head):
    """During the forward, the head keeps its input and answers a (..., 0) placeholder: no logits."""
    captured = []
    own = head.__dict__.get("forward")  # an instance-level forward already there (a hook), put back after

    def forward(hidden):
        placeholder = hidden.new_empty(hidden.shape[:-1] + (0,))
        captured.append((hidden, placeholder))
        return placeholder

    head.forward = forward
    try:
        yield captured
    finally:
        if own is None:
            del head.forward
        else:
            head.forward = own


def _causal_lm_loss(model, hidden, labels, kwargs, state: _State):
    """transformers' causal-LM loss, by linear_cross_entropy on the head's input rows."""
    ignore_index = kwargs.get("ignore_index", -100)
    shift_labels = kwargs.get("shift_labels")
    if shift_labels is None:
        # position t predicts token t + 1; the last position predicts nothing
        shift_labels = nn.functional.pad(labels[..., 1:], (0, 1), value=ignore_index)
    head = model.lm_head
    rows = hidden.reshape(-1, hidden.shape[-1])
    target = shift_labels.reshape(-1).to(rows.device)
    if target.numel() != rows.shape[0]:
        raise ValueError(f"labels give {target.numel()} prediction targets but the head received {rows.shape[0]} "
                         "positions (logits_to_keep keeps fewer: pass shift_labels of the kept positions)")
    if rows.dtype != head.weight.dtype:  # under autocast the hidden states may come in another dtype
        rows = rows.to(head.weight.dtype)
    num_items = kwargs.get("num_items_in_batch")
    if isinstance(num_items, torch.Tensor):
        num_items = num_items.to(rows.device)
    softcap = getattr(model.config, "final_logit_softcapping", None) if state.softcap else None
    loss = linear_cross_entropy(rows, head.weight, target, linear_bias=head.bias, ignore_index=ignore_index,
                                softcap=softcap, num_items=num_items, chunk_size=state.chunk_size)
    # transformers computes the loss in float32 for 16-bit models; the same dtype here
    return loss.float() if loss.dtype in (torch.float16, torch.bfloat16) else loss
