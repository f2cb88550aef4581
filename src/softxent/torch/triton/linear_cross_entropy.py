"""Linear layer + cross-entropy on the GPU: cuBLAS matmuls in row chunks feeding the cross-entropy kernel.

For each chunk of rows of x: ``logits = x_c @ W.T + bias`` (torch.mm / addmm: cuBLAS), then the
cross-entropy kernel writes the loss, the lse and d(loss)/d(logits) over the chunk's logits in place,
then ``dx_c = dlogits @ W`` and ``dW += dlogits.T @ x_c`` (cuBLAS again) and ``dbias += sum dlogits``. The
logits are computed once and the gradients come out of the forward (no recomputation in backward, unlike
Cut Cross-Entropy, Wijmans et al. 2024, which trades a second matmul for never storing a chunk).

Memory beyond inputs and outputs: one chunk of logits, plus, for a 16-bit weight with float32
accumulation (the default), a (V, D) float32 accumulator that lives for the whole call: each chunk's
product is added into it by one GEMM with a float32 output (``torch.addmm(..., out_dtype=float32)``,
cuBLAS accumulating in float32) or, where that overload is missing (the CPU, older torch), in slices of V
whose float32 product is a fraction of a chunk. No (V, D) float32 temporary per chunk. With
``weight_grad_fp32=False`` the GEMM accumulates straight into the weight's dtype (one rounding per chunk,
no accumulator).
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from ..._options import LossOptions
from . import _labels
from ._config import CONFIG, check_dtype
from .cross_entropy import _check_targets, cross_entropy_forward

# a chunk of logits takes about this fraction of the gradients' own bytes (at least 64 rows, at most N):
# big enough for cuBLAS and for few passes over dW, small next to what the call must hold anyway
_CHUNK_FRACTION = 0.08
_MIN_CHUNK_ROWS = 64

_FP32_ADDMM: dict[str, bool] = {}  # device type -> whether addmm(..., out_dtype=float32, out=acc) works


def default_chunk_rows(num_rows: int, features: int, num_classes: int, itemsize: int,
                       fp32_accumulator: bool) -> int:
    """Rows per chunk: the chunk's logits are about _CHUNK_FRACTION of the gradients' bytes (with the
    float32 accumulator, if any, counted among them)."""
    grad_bytes = (num_rows + num_classes) * features * itemsize
    if fp32_accumulator:
        grad_bytes += num_classes * features * 4
    rows = int(_CHUNK_FRACTION * grad_bytes) // max(1, num_classes * itemsize)
    rows = max(_MIN_CHUNK_ROWS, rows // _MIN_CHUNK_ROWS * _MIN_CHUNK_ROWS)
    return max(1, min(rows, num_rows))


def _accumulate_fp32(acc: torch.Tensor, a: torch.Tensor, b: torch.Tensor, slice_rows: int) -> None:
    """acc += a @ b with a float32 acc and 16-bit a, b, never holding a (V, D) product."""
    kind = acc.device.type
    if _FP32_ADDMM.get(kind, True):
        try:
            torch.addmm(acc, a, b, out_dtype=torch.float32, out=acc)
            _FP32_ADDMM[kind] = True
            return
        except (TypeError, RuntimeError, NotImplementedError):
            if kind in _FP32_ADDMM:  # it worked before: this is a real error
                raise
            _FP32_ADDMM[kind] = False
    # fallback: the product of a slice of V in float32 (a 16-bit product would round every chunk's share)
    b32 = b.float()
    for lo in range(0, acc.shape[0], slice_rows):
        hi = min(lo + slice_rows, acc.shape[0])
        acc[lo:hi].addmm_(a[lo:hi].float(), b32)


def linear_cross_entropy_forward(x: torch.Tensor, linear_weight: torch.Tensor, target: torch.Tensor,
                                 linear_bias: Optional[torch.Tensor], weight: Optional[torch.Tensor],
                                 grad_scale: Optional[torch.Tensor], grad_scale_value: float, ignore_index: int,
                                 label_smoothing: float, z_loss: float, softcap: Optional[float], temperature: float,
                                 check_labels: bool, need_grad: bool, chunk_size: int, weight_grad_fp32: bool):
    """Returns (losses, lse, flag, dx, dw, dbias); gradients are empty tensors when not needed."""
    num_rows, features = x.shape
    num_classes = linear_weight.shape[0]
    device = x.device
    dtype = _compute_dtype(x, linear_weight, linear_bias)
    x_c = x.to(dtype)
    w_c = linear_weight.to(dtype)
    b_c = None if linear_bias is None else linear_bias.to(dtype)
    fp32_acc = need_grad and weight_grad_fp32 and w_c.dtype in (torch.float16, torch.bfloat16)
    chunk = chunk_size or default_chunk_rows(num_rows, features, num_classes, w_c.element_size(), fp32_acc)
    chunk = max(1, min(chunk, num_rows))

    losses = torch.empty(num_rows, dtype=torch.float32, device=device)
    lse = torch.empty(num_rows, dtype=torch.float32, device=device)
    probs = target.is_floating_point()
    flag = _labels.new_flag(device) if check_labels and not probs else torch.empty(0, dtype=torch.int64,
                                                                                     device=device)
    def empty():  # a distinct tensor each: a custom op's outputs may not alias one another
        return torch.empty(0, dtype=dtype, device=device)

    dx = torch.empty_like(x_c) if need_grad else empty()
    dw = torch.zeros((num_classes, features), dtype=torch.float32 if fp32_acc else w_c.dtype,
                     device=device) if need_grad else empty()
    dbias = torch.zeros(num_classes, dtype=torch.float32, device=device) if need_grad and b_c is not None else empty()
    if num_rows == 0:
        return losses, lse, flag, dx, dw.to(linear_weight.dtype) if need_grad else dw, dbias

    buffer = torch.empty((chunk, num_classes), dtype=dtype, device=device)
    # the fallback accumulation's slices of V hold at most a quarter of a chunk of logits
    slice_rows = max(64, (chunk * num_classes) // (4 * max(1, features)))
    for start in range(0, num_rows, chunk):
        stop = min(start + chunk, num_rows)
        inputs = x_c[start:stop]
        logits = buffer[: stop - start]
        # 1. logits of the chunk (cuBLAS, float32 accumulation, rounded to the compute dtype)
        if b_c is None:
            torch.mm(inputs, w_c.T, out=logits)
        else:
            torch.addmm(b_c, inputs, w_c.T, out=logits)
        # 2. loss, lse and the gradient over the logits, in place
        part_losses, part_lse, part_flag = cross_entropy_forward(
            logits, target[start:stop], weight, grad_scale, grad_scale_value, ignore_index, label_smoothing,
            z_loss, softcap, temperature, check_labels, logits if need_grad else None)
        losses[start:stop] = part_losses
        lse[start:stop] = part_lse
        if flag.numel():  # the chunk's rows are numbered from 0: shift them to global rows
            shifted = torch.where(part_flag == _labels.NO_BAD, part_flag, part_flag + (start << 32))
            torch.minimum(flag, shifted, out=flag)
        if need_grad:
            # 3. dx = dlogits @ W, dW += dlogits.T @ x, dbias += column sums (float32)
            torch.mm(logits, w_c, out=dx[start:stop])
            if fp32_acc:
                _accumulate_fp32(dw, logits.T, inputs, slice_rows)
            else:
                dw.addmm_(logits.T, inputs)
            if b_c is not None:
                dbias += logits.sum(dim=0, dtype=torch.float32)
    if need_grad:
        dx = dx.to(x.dtype)
        dw = dw.to(linear_weight.dtype)
        if linear_bias is not None:
            dbias = dbias.to(linear_bias.dtype)
    return losses, lse, flag, dx, dw, dbias


@torch.library.custom_op("softxent_triton::linear_cross_entropy", mutates_args=())
def _linear_cross_entropy_op(x: torch.Tensor, linear_weight: torch.Tensor, target: torch.Tensor,
                             linear_bias: Optional[torch.Tensor], weight: Optional[torch.Tensor],
                             grad_scale: Optional[torch.Tensor], grad_scale_value: float, ignore_index: int,
                             label_smoothing: float, z_loss: float, softcap: Optional[float], temperature: float,
                             check_labels: bool, need_grad: bool, chunk_size: int, weight_grad_fp32: bool
                             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                        torch.Tensor]:
    return linear_cross_entropy_forward(x, linear_weight, target, linear_bias, weight, grad_scale, grad_scale_value,
                                        ignore_index, label_smoothing, z_loss, softcap, temperature, check_labels,
                                        need_grad, chunk_size, weight_grad_fp32)


@_linear_cross_entropy_op.register_fake
def _(x, linear_weight, target, linear_bias, weight, grad_scale, grad_scale_value, ignore_index, label_smoothing,
      z_loss, softcap, temperature, check_labels, need_grad, chunk_size, weight_grad_fp32):
    num_rows = x.shape[0]
    flag_size = 1 if check_labels and not target.is_floating_point() else 0
    dtype = _compute_dtype(x, linear_weight, linear_bias)
    if need_grad:
        dx, dw = x.new_empty(x.shape), linear_weight.new_empty(linear_weight.shape)
        dbias = linear_bias.new_empty(linear_bias.shape) if linear_bias is not None else x.new_empty(0, dtype=dtype)
    else:
        dx, dw, dbias = (x.new_empty(0, dtype=dtype) for _ in range(3))
    return (x.new_empty(num_rows, dtype=torch.float32), x.new_empty(num_rows, dtype=torch.float32),
            x.new_empty(flag_size, dtype=torch.int64), dx, dw, dbias)


def linear_cross_entropy_rows(x: torch.Tensor, linear_weight: torch.Tensor, target: torch.Tensor,
                              linear_bias: Optional[torch.Tensor], weight: Optional[torch.Tensor],
                              options: LossOptions, *, grad_scale: float | torch.Tensor = 1.0, need_grad: bool = True,
                              chunk_size: Optional[int] = None, weight_grad_fp32: bool = True,
                              label_check: Optional[str] = None, label_shape: Optional[tuple] = None):
    """Cross-entropy of a linear layer's logits, ``x @ linear_weight.T + linear_bias``, never all held at once.

    Per row, the loss of `cross_entropy_rows` on that row's logits. The rows go through in chunks: cuBLAS
    computes a chunk's logits, the Triton kernel turns them into their gradient in place, cuBLAS folds that
    into dx, dW and dbias. Each logit is computed once; the gradients are ready when this returns.

    Args:
        x: (N, D) inputs. linear_weight: (V, D). linear_bias: (V,) or None.
        target: (N,) class indices or (N, V) probabilities. weight: (V,) class weights or None.
        options: as cross_entropy_rows (ignore_index, label_smoothing, z_loss, softcap, temperature).
        grad_scale: float or 0-d tensor; the gradients are those of ``grad_scale * losses.sum()``.
        need_grad: compute dx, dW, dbias (else only losses and lse).
        chunk_size: rows per chunk; None: about 8% of the gradients' bytes per chunk of logits.
        weight_grad_fp32: accumulate dW (and dbias) in float32 for a 16-bit weight (returned in the
            weight's dtype); False accumulates in the weight's dtype and needs no (V, D) float32 buffer.
        label_check, label_shape: as cross_entropy_rows.

    Returns:
        ``(losses, lse, dx, dw, dbias)``: (N,) float32 twice, then the gradients in the dtypes of x,
        linear_weight and linear_bias (None when not needed or without a bias).

    Example:
        >>> import torch
        >>> from softxent._options import LossOptions
        >>> from softxent.torch.triton import linear_cross_entropy_rows   # doctest: +SKIP
        >>> x, w = torch.randn(8, 4, device="cuda"), torch.randn(10, 4, device="cuda")   # doctest: +SKIP
        >>> losses, lse, dx, dw, db = linear_cross_entropy_rows(
        ...     x, w, torch.arange(8, device="cuda"), None, None, LossOptions())   # doctest: +SKIP

    References: Wijmans et al. 2024, "Cut your losses in large-vocabulary language models".
    """
    compiling = torch.compiler.is_compiling()
    mode = label_check or CONFIG.label_check
    if mode not in ("lazy", "sync", "off"):
        raise ValueError(f"label_check must be one of 'lazy', 'sync' or 'off'; got {mode!r}")
    if compiling or (x.is_cuda and torch.cuda.is_current_stream_capturing()):
        mode = "off"
    elif mode == "lazy":
        _labels.raise_arrived()
    _check_layer(x, linear_weight, linear_bias)
    _check_targets(x.shape[0], linear_weight.shape[0], x.device, target, weight)
    if isinstance(grad_scale, torch.Tensor):
        scale, scale_value = grad_scale.reshape(()), 1.0
    else:
        scale, scale_value = None, float(grad_scale)
    losses, lse, flag, dx, dw, dbias = torch.ops.softxent_triton.linear_cross_entropy(
        x, linear_weight, target, linear_bias, weight, scale, scale_value, options.ignore_index,
        options.label_smoothing, options.z_loss, options.softcap, options.temperature, mode != "off", need_grad,
        int(chunk_size or 0), bool(weight_grad_fp32))
    if mode != "off" and flag.numel():
        _labels.watch(flag, linear_weight.shape[0], options.ignore_index, label_shape, mode)
    if not need_grad:
        return losses, lse, None, None, None
    return losses, lse, dx, dw, dbias if linear_bias is not None else None


def _compute_dtype(x, linear_weight, linear_bias) -> torch.dtype:
    dtype = torch.result_type(x, linear_weight)
    return dtype if linear_bias is None else torch.promote_types(dtype, linear_bias.dtype)


def _check_layer(x, linear_weight, linear_bias) -> None:
    check_dtype(x, "x")
    check_dtype(linear_weight, "linear_weight")
    for name, tensor in (("linear_weight", linear_weight), ("linear_bias", linear_bias)):
        if tensor is not None and tensor.device != x.device:
            raise ValueError(f"{name} must be on {x.device} like x; got {tensor.device}")
    if x.dim() != 2 or linear_weight.dim() != 2 or x.shape[1] != linear_weight.shape[1]:
        raise ValueError(f"x must be (N, D) and linear_weight (V, D); got shapes {tuple(x.shape)} and "
                         f"{tuple(linear_weight.shape)}")
    if linear_bias is not None and tuple(linear_bias.shape) != (linear_weight.shape[0],):
        raise ValueError(f"linear_bias must have shape ({linear_weight.shape[0]},); got {tuple(linear_bias.shape)}")
