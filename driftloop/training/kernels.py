"""Memory-lean autograd for the two elementwise blocks of Llama-style decoders.

Autograd keeps every intermediate of an RMSNorm (the float32 copy, the normalised
tensor, the scaled result) and of the SwiGLU product (gate, silu(gate), up) for the
backward pass. On a small model those activations, not the weights, set the peak
memory of LoRA training. The functions below keep only their inputs and a per-token
scale and recompute the rest in backward, which costs a few elementwise operations.
They are numerically the same computation as the modules they replace.
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F


def _upcast(x):
    return x.float() if x.element_size() < 4 else x


class _RMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, eps: float):
        x32 = _upcast(x)
        rstd = torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
        ctx.save_for_backward(x, weight, rstd)
        return weight * (x32 * rstd).to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        x, weight, rstd = ctx.saved_tensors
        normed = _upcast(x) * rstd
        grad_normed = _upcast(grad * weight)
        grad_x = rstd * (grad_normed - normed * (grad_normed * normed).mean(-1, keepdim=True))
        grad_w = None
        if ctx.needs_input_grad[1]:
            grad_w = (grad * normed.to(x.dtype)).reshape(-1, grad.shape[-1]).sum(0).to(weight.dtype)
        return grad_x.to(x.dtype), grad_w, None


class _SiluMul(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gate, up):
        ctx.save_for_backward(gate, up)
        return F.silu(gate) * up

    @staticmethod
    def backward(ctx, grad):
        gate, up = ctx.saved_tensors
        sig = torch.sigmoid(gate)
        silu = gate * sig
        grad_gate = grad * up * sig * (1 + gate * (1 - sig))
        return grad_gate, grad * silu


def rms_norm(x, weight, eps: float):
    return _RMSNorm.apply(x, weight, eps)


def silu_mul(gate, up):
    return _SiluMul.apply(gate, up)


def _norm_forward(self, hidden_states):
    return rms_norm(hidden_states, self.weight, self.variance_epsilon)


def _mlp_forward(self, x):
    return self.down_proj(silu_mul(self.gate_proj(x), self.up_proj(x)))


_SILU = {"SiLU", "SiLUActivation"}


def patch_lean_activations(model) -> int:
    """Swap in the lean forward on every matching module; returns how many were patched.

    Only modules with exactly the Llama layout are touched (RMSNorm with `weight` and
    `variance_epsilon`; an MLP with gate/up/down projections and a SiLU activation), so
    architectures with other norms (Gemma's 1 + weight) or activations keep theirs.
    """
    patched = 0
    for module in model.modules():
        name = type(module).__name__
        if name.endswith("RMSNorm") and hasattr(module, "variance_epsilon") and isinstance(getattr(module, "weight", None), torch.nn.Parameter):
            if module.weight.dim() == 1:
                module.forward = types.MethodType(_norm_forward, module)
                patched += 1
        elif all(hasattr(module, a) for a in ("gate_proj", "up_proj", "down_proj", "act_fn")) and type(module.act_fn).__name__ in _SILU:
            module.forward = types.MethodType(_mlp_forward, module)
            patched += 1
    return patched
