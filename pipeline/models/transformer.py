"""The decoder every variant shares: pre-LN causal blocks, rotary (or learned) positions, GELU MLP.

A block only knows how to attend over its own input plus optional extra keys that a memory
hands it (`context`); everything about segments and memory lives in the memory modules.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

# context(xn, k, v) -> (k, v, mask): lets a memory prepend keys/values (xl's cache) to a block's
# attention. k, v: [B', H, T, hd] unrotated; mask: bool [*, 1, T, Tk] (True = may attend) or None.
Context = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple]


class Rotary(nn.Module):
    """Rotary position tables (complex unit rotations), cached per length; not saved (a pure
    function of the config). Channel pairs (2i, 2i+1) rotate together."""

    def __init__(self, head_dim: int, base: float):
        super().__init__()
        self.head_dim, self.base = head_dim, base
        self._cache: dict = {}

    def tables(self, n: int, device) -> torch.Tensor:
        key = (n, str(device))
        if key not in self._cache:
            inv = 1.0 / (self.base ** (torch.arange(0, self.head_dim, 2, dtype=torch.float64) / self.head_dim))
            ang = torch.arange(n, dtype=torch.float64)[:, None] * inv[None, :]  # [n, hd/2]
            self._cache[key] = torch.polar(torch.ones_like(ang), ang).to(device, torch.complex64)
        return self._cache[key]


def apply_rotary(x: torch.Tensor, rot: torch.Tensor) -> torch.Tensor:
    """x: [..., T, hd] real; rot: [T, hd/2] complex. One complex multiply (5x faster on CPU than
    the rotate-half formulation with its cat/neg)."""
    xc = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)))
    return torch.view_as_real(xc * rot).flatten(-2).type_as(x)


class SelfAttention(nn.Module):
    def __init__(self, d_model: int, n_heads: int, dropout: float, rotary: Optional[Rotary]):
        super().__init__()
        self.n_heads, self.head_dim = n_heads, d_model // n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.dropout = dropout
        self.rotary = rotary

    def project_kv(self, xn: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values only (xl recomputes them from detached states). -> 2 x [B', H, T, hd]"""
        d = xn.shape[-1]
        kv = F.linear(xn, self.qkv.weight[d:], self.qkv.bias[d:])
        B, T, _ = kv.shape
        k, v = kv.view(B, T, 2, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        return k, v

    def forward(self, xn: torch.Tensor, context: Optional[Context] = None, return_probs: bool = False):
        B, T, D = xn.shape  # xn: layer-normed input [B', T, D]
        qkv = self.qkv(xn).view(B, T, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # [3, B', H, T, hd]
        q, k, v = qkv
        mask = None
        if context is not None:
            k, v, mask = context(xn, k, v)  # k, v: [B', H, Tk, hd]
        Tk = k.shape[2]
        if self.rotary is not None:  # queries are the last T of the Tk key positions
            rot = self.rotary.tables(Tk, xn.device)
            if Tk == T:  # one rotation for q and k together
                q, k = apply_rotary(qkv[:2], rot)
            else:
                q, k = apply_rotary(q, rot[Tk - T :]), apply_rotary(k, rot)
        probs = None
        p = self.dropout if self.training else 0.0
        if return_probs:  # explicit (slow) path so the probabilities can be returned
            if mask is None:
                mask = torch.ones(T, Tk, dtype=torch.bool, device=xn.device).tril(Tk - T)
            att = (q @ k.transpose(-2, -1)) / math.sqrt(self.head_dim)
            probs = att.masked_fill(~mask, float("-inf")).softmax(-1)  # [B', H, T, Tk]
            y = F.dropout(probs, p, self.training) @ v
        elif mask is None:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        y = y.transpose(1, 2).reshape(B, T, D)
        return F.dropout(self.proj(y), p, self.training), probs


class ShortConv(nn.Module):
    """Causal depthwise convolution over a token and its kernel-1 predecessors inside the window,
    added to the attention input: u_t = x_t + sum_j w_j * x_{t-j} (per channel). The H3 / Hyena / Based
    "short convolution": a value token's state then carries the entity just before it without an
    attention head having to learn to look one token back, which is what makes associative recall
    learnable in a few hundred steps instead of tens of thousands at this size. The window is the
    segment for window/xl/cmr (its first token sees no predecessor) and the document for full."""

    def __init__(self, d_model: int, kernel: int):
        super().__init__()
        self.kernel = kernel
        self.weight = nn.Parameter(torch.zeros(d_model, 1, kernel))  # [D, 1, k]: taps t-k+1 .. t

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xp = F.pad(x, (0, 0, self.kernel - 1, 0))  # x: [B', T, D] -> [B', k-1+T, D], zeros before the window
        # A 2-D convolution of the channels-last view [B', D, 1, k-1+T] of xp: no transposed copy, and oneDNN's
        # depthwise kernel for the backward (conv1d on [B', D, T] took ~6x its forward for the weight gradient).
        # Output and input gradient are bitwise those of conv1d; the weight gradient sums in another order.
        y = F.conv2d(xp.unsqueeze(1).permute(0, 3, 1, 2), self.weight.unsqueeze(2), groups=x.shape[-1])
        return x + y.squeeze(2).transpose(1, 2)  # [B', D, 1, T] -> [B', T, D]


class Block(nn.Module):
    """Pre-LN block: x + attn(conv(LN(x))), then x + MLP(LN(x)) (conv: ShortConv, or none)."""

    def __init__(self, d_model: int, n_heads: int, d_ff: int, dropout: float, rotary: Optional[Rotary],
                 conv_kernel: int = 0):
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.conv = ShortConv(d_model, conv_kernel) if conv_kernel > 0 else None
        self.attn = SelfAttention(d_model, n_heads, dropout, rotary)
        self.ln2 = nn.LayerNorm(d_model)
        self.fc = nn.Linear(d_model, d_ff)
        self.out = nn.Linear(d_ff, d_model)
        self.dropout = dropout

    def forward(self, x: torch.Tensor, context: Optional[Context] = None, return_probs: bool = False):
        xn = self.ln1(x)
        if self.conv is not None:
            xn = self.conv(xn)
        a, probs = self.attn(xn, context, return_probs)
        x = x + a
        x = x + F.dropout(self.out(F.gelu(self.fc(self.ln2(x)))), self.dropout, self.training)
        return x, probs


def init_weights(module: nn.Module, n_layers: int) -> None:
    """nanoGPT-style init: N(0, 0.02), residual output projections scaled by 1/sqrt(2 n_layers)."""
    for name, p in module.named_parameters():
        if p.dim() >= 2:
            std = 0.02 / math.sqrt(2 * n_layers) if name.endswith(("attn.proj.weight", "out.weight")) else 0.02
            nn.init.normal_(p, 0.0, std)
        elif name.endswith("bias"):
            nn.init.zeros_(p)
