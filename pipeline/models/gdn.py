"""`gdn` (Gated DeltaNet, Yang, Kautz & Hatamizadeh, ICLR 2025): a gated delta-rule recurrent layer beside
the window attention.

At the input of block l (l in `layers`): h <- h + GDN_l(LN(h)); block l then reads the segment as `window`
does. GDN_l, per head: q, k [d_key] and v [d_value] from causal short convolutions + SiLU (q, k L2-normalised),
decay alpha_t = exp(-exp(A_log) * softplus(w_a . x_t + dt_bias)) (Mamba2's parametrisation, as the paper),
write strength beta_t = sigmoid(w_b . x_t), and a state S [d_key, d_value]:
    S_t = alpha_t S_{t-1} + beta_t k_t (v_t - alpha_t S_{t-1}^T k_t)^T,    o_t = S_t^T q_t / sqrt(d_key)
(forget by alpha, then overwrite what the memory returns for k_t by v_t), read out as RMSNorm(o_t) * SiLU(g_t)
per head, then W_o.

Reading order. The recurrence runs over every token of the document, not segment by segment: o_t reads S_t,
which holds tokens <= t only, so the memory sees the whole past (the current segment included) and stays
token-causal. Layer l's recurrence needs only layer l's inputs, so the base's layer-by-layer chunks of segments
work unchanged: S and the short convolutions' last kernel-1 inputs carry from one chunk to the next (default:
the whole document is one chunk). Gradients flow through the whole document: truncating them at segment
boundaries would need the segment loop, and the training documents are short.

State: len(layers) * heads * d_key * d_value floats (2 * 2 * 16 * 32 = 2,048 at the defaults, as cmr's banks).
The convolutions' carried inputs, (conv_kernel - 1) * heads * (2 d_key + d_value) per layer, are a window of
conv_kernel - 1 tokens (3 by default), like the attention's own, and are not counted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.config.schema import BackboneConfig, MemoryConfig
from pipeline.errors import ConfigError
from pipeline.models.base import Memory, Step


@dataclass
class GDNConfig(MemoryConfig):
    """Gated DeltaNet (Yang et al. 2025): a gated delta-rule state per layer and head beside the window attention."""

    name: str = "gdn"
    spans_document: ClassVar[bool] = True
    layers: Optional[List[int]] = None  # layers whose input gets a GDN sub-layer; null: every layer
    # one head with a 32-wide key, not fla's 2 heads x 16 (expand_v 2) at the same 2,048 floats: a delta-rule head
    # holds about d_key separable keys, and every head sees every fact. On seed 2 (the study's worst) far recall on
    # val_long went 0.879 -> 0.973 (docs/MEMORIES.md, "gdn: one wide head"). State 2 layers * 1 * 32 * 32 = 2,048
    # floats at the default backbone, cmr's banks (1 * 32 * 64)
    heads: int = 1
    d_key: int = 32  # key/query width per head
    d_value: int = 32  # value width per head
    conv_kernel: int = 4  # causal short convolution taps on q, k, v (0: none, SiLU only); the paper's 4
    chunk: int = 32  # tokens per chunk of the chunked delta rule: speed only, the result is the recurrence's

    def resolved_layers(self, backbone: BackboneConfig) -> list[int]:
        return sorted(range(backbone.n_layers) if self.layers is None else self.layers)

    def check(self, backbone: BackboneConfig) -> None:
        p = f"models.{self.name}"
        for key, lo in (("heads", 1), ("d_key", 1), ("d_value", 1), ("conv_kernel", 0), ("chunk", 1)):
            val = getattr(self, key)
            if not isinstance(val, int) or isinstance(val, bool) or val < lo:
                raise ConfigError(f"{p}.{key} = {val!r} must be an integer >= {lo}")
        if self.layers is not None:
            n = backbone.n_layers
            if not isinstance(self.layers, (list, tuple)) or not self.layers:
                raise ConfigError(f"{p}.layers = {self.layers!r} must be null (every layer) or a non-empty list "
                                  f"of layers in [0, {n - 1}]")
            bad = [x for x in self.layers if not isinstance(x, int) or isinstance(x, bool) or not 0 <= x < n]
            if bad:
                raise ConfigError(f"{p}.layers = {list(self.layers)}: {bad} outside [0, {n - 1}] "
                                  f"(backbone.n_layers = {n})")
            if len(set(self.layers)) != len(self.layers):
                raise ConfigError(f"{p}.layers = {list(self.layers)} has duplicates")

    def memory_floats(self, backbone: BackboneConfig) -> int:
        return len(self.resolved_layers(backbone)) * self.heads * self.d_key * self.d_value


# ---- the gated delta rule ----------------------------------------------------------------------------
# q, k: [B, H, L, d_key]; v: [B, H, L, d_value]; log_alpha (<= 0), beta: [B, H, L]; state: [B, H, d_key, d_value].
# Both return (o [B, H, L, d_value], final state).

def gated_delta_rule_recurrent(q, k, v, log_alpha, beta, state=None, scale=None):
    """The definition, one token at a time: the reference the chunked form is tested against."""
    B, H, L, dk = k.shape
    scale = dk ** -0.5 if scale is None else scale
    S = q.new_zeros(B, H, dk, v.shape[-1]) if state is None else state
    out = []
    for t in range(L):
        S = log_alpha[:, :, t, None, None].exp() * S  # alpha_t S_{t-1}
        kt = k[:, :, t, :, None]  # [B, H, dk, 1]
        delta = beta[:, :, t, None] * (v[:, :, t] - (S * kt).sum(-2))  # beta_t (v_t - alpha_t S_{t-1}^T k_t)
        S = S + kt * delta[:, :, None, :]
        out.append((S * q[:, :, t, :, None]).sum(-2) * scale)  # S_t^T q_t
    return torch.stack(out, 2), S


def gated_delta_rule_chunked(q, k, v, log_alpha, beta, state=None, chunk: int = 32, scale=None):
    """The same recurrence in chunks of c tokens (the WY/UT form of fla's chunk kernel), a loop over chunks only.

    In a chunk with cumulative log-decay G_t (gamma_t = exp(G_t)) and entry state S_0, the writes
    U_t = beta_t (v_t - alpha_t S_{t-1}^T k_t) satisfy (I + A) U = beta V - (beta gamma K) S_0, with
    A_ts = beta_t (gamma_t / gamma_s) k_t . k_s for s < t. One triangular solve for all chunks gives
    u = (I + A)^-1 beta V and w = (I + A)^-1 beta gamma K, so U = u - w S_0; then
    o_t = scale (gamma_t S_0^T q_t + sum_{s<=t} (gamma_t / gamma_s)(q_t . k_s) U_s) and
    S_c = gamma_c S_0 + sum_s (gamma_c / gamma_s) k_s U_s^T.
    Padding tokens (log_alpha = beta = 0) leave the state unchanged."""
    B, H, L, dk = k.shape
    dv = v.shape[-1]
    scale = dk ** -0.5 if scale is None else scale
    pad = -L % chunk
    if pad:
        q, k, v = (F.pad(x, (0, 0, 0, pad)) for x in (q, k, v))
        log_alpha, beta = F.pad(log_alpha, (0, pad)), F.pad(beta, (0, pad))
    n, c = (L + pad) // chunk, chunk
    q, k, v = q.view(B, H, n, c, dk), k.view(B, H, n, c, dk), v.view(B, H, n, c, dv)
    G = log_alpha.view(B, H, n, c).cumsum(-1)
    causal = torch.ones(c, c, dtype=torch.bool, device=q.device).tril()
    decay = (G[..., :, None] - G[..., None, :]).masked_fill(~causal, float("-inf")).exp()  # gamma_t / gamma_s, s <= t
    b = beta.view(B, H, n, c, 1)
    A = (b * (k @ k.mT) * decay).tril(-1)
    rhs = torch.cat([b * v, (b * G[..., None].exp()) * k], -1)
    u, w = torch.linalg.solve_triangular(A, rhs, upper=False, unitriangular=True).split([dv, dk], -1)
    qk = (q @ k.mT) * decay * scale  # intra-chunk read, [B, H, n, c, c]
    q_in = q * (G[..., None].exp() * scale)  # reads S_0
    k_out = k * (G[..., -1:] - G)[..., None].exp()  # writes into S_c
    gamma_c = G[..., -1, None, None].exp()  # [B, H, n, 1, 1]
    S = q.new_zeros(B, H, dk, dv) if state is None else state
    out = []
    # unbind, not indexing: the backward of one index is a zero tensor of the whole input (quadratic in n)
    for u_i, w_i, q_i, qk_i, k_i, g_i in zip(*(t.unbind(2) for t in (u, w, q_in, qk, k_out, gamma_c))):
        U = u_i - w_i @ S
        out.append(q_i @ S + qk_i @ U)
        S = g_i * S + k_i.mT @ U
    return torch.stack(out, 2).view(B, H, n * c, dv)[:, :, :L], S


# ---- the layer ---------------------------------------------------------------------------------------
class GatedDeltaNet(nn.Module):
    """One GDN sub-layer (the paper's block without its MLP: the backbone block follows). Projections are fused:
    LN(x) -> [q; k; v | g | a | b]."""

    def __init__(self, d_model: int, heads: int, d_key: int, d_value: int, conv_kernel: int, chunk: int):
        super().__init__()
        self.H, self.dk, self.dv, self.kernel, self.chunk = heads, d_key, d_value, conv_kernel, chunk
        self.n_qkv = heads * (2 * d_key + d_value)
        self.ln = nn.LayerNorm(d_model)
        self.proj = nn.Linear(d_model, self.n_qkv + heads * d_value + 2 * heads, bias=False)
        self.conv = nn.Parameter(torch.empty(self.n_qkv, conv_kernel)) if conv_kernel else None  # taps t-k+1 .. t
        self.A_log = nn.Parameter(torch.empty(heads))
        self.dt_bias = nn.Parameter(torch.empty(heads))
        self.norm = nn.Parameter(torch.ones(d_value))  # RMSNorm weight, shared by the heads
        self.out = nn.Linear(heads * d_value, d_model, bias=False)

    def reset_parameters(self, n_layers: int) -> None:
        """fla's initialisation for the gate and convolution; the backbone's (nanoGPT) for the matrices."""
        self.ln.reset_parameters()
        nn.init.normal_(self.proj.weight, 0.0, 0.02)
        nn.init.normal_(self.out.weight, 0.0, 0.02 / math.sqrt(2 * n_layers))  # a residual output projection
        if self.conv is not None:
            bound = 1 / math.sqrt(self.kernel)  # nn.Conv1d's default for a depthwise kernel
            nn.init.uniform_(self.conv, -bound, bound)
        with torch.no_grad():
            self.A_log.copy_(torch.empty(self.H).uniform_(1, 16).log())  # decay rates A in [1, 16]
            dt = torch.exp(torch.rand(self.H) * (math.log(0.1) - math.log(0.001)) + math.log(0.001))
            self.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # softplus(dt_bias) = dt in [0.001, 0.1]
        nn.init.ones_(self.norm)

    def short_conv(self, x: torch.Tensor, tail: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Causal depthwise convolution over the document: x [B, L, C], tail [B, k-1, C] the previous chunk's
        last inputs (None: the document start, zeros). -> (SiLU(conv), new tail)."""
        if self.conv is None:
            return F.silu(x), x[:, :0]
        B, L, C = x.shape
        if tail is None:
            tail = x.new_zeros(B, self.kernel - 1, C)
        xp = torch.cat([tail, x], 1)  # [B, k-1+L, C]
        # a 2-D convolution of the channels-last view [B, C, 1, k-1+L], as the backbone's ShortConv does: on CPU its
        # backward is ~4x faster than conv1d's or a sum of shifted taps (measured here, [8, 512, 128])
        y = F.conv2d(xp.unsqueeze(1).permute(0, 3, 1, 2), self.conv[:, None, None, :], groups=C)
        return F.silu(y).squeeze(2).mT.contiguous(), xp[:, L:]

    def forward(self, x: torch.Tensor, carry: Optional[tuple]) -> tuple[torch.Tensor, tuple]:
        """x [B, L, D], the next L tokens of each document; carry: (S, conv tail) after the tokens before them
        (None at the document start). -> (output [B, L, D], carry)."""
        B, L, _ = x.shape
        H, dk, dv = self.H, self.dk, self.dv
        S, tail = carry if carry is not None else (None, None)
        qkv, g, a, b = self.proj(self.ln(x)).split([self.n_qkv, H * dv, H, H], -1)
        qkv, tail = self.short_conv(qkv, tail)
        q, k, v = qkv.split([H * dk, H * dk, H * dv], -1)
        q = F.normalize(q.view(B, L, H, dk), dim=-1).transpose(1, 2)  # [B, H, L, dk]
        k = F.normalize(k.view(B, L, H, dk), dim=-1).transpose(1, 2)
        v = v.view(B, L, H, dv).transpose(1, 2)
        log_alpha = (-self.A_log.exp() * F.softplus(a + self.dt_bias)).transpose(1, 2)  # [B, H, L]
        beta = torch.sigmoid(b).transpose(1, 2)
        o, S = gated_delta_rule_chunked(q, k, v, log_alpha, beta, S, self.chunk)
        o = F.rms_norm(o.transpose(1, 2), (dv,), self.norm, 1e-5) * F.silu(g.view(B, L, H, dv))
        return self.out(o.reshape(B, L, H * dv)), (S, tail)


class GDNMemory(Memory):
    Config = GDNConfig
    cfg: GDNConfig

    def __init__(self, backbone: BackboneConfig, cfg: GDNConfig):
        cfg.check(backbone)
        super().__init__(backbone, cfg)
        self.gdn = nn.ModuleDict(
            {str(l): GatedDeltaNet(backbone.d_model, cfg.heads, cfg.d_key, cfg.d_value, cfg.conv_kernel, cfg.chunk)
             for l in cfg.resolved_layers(backbone)}
        )

    def reset_parameters(self) -> None:
        for m in self.gdn.values():
            m.reset_parameters(self.backbone.n_layers)

    def memory_floats(self) -> int:
        return self.cfg.memory_floats(self.backbone)

    def new_state(self) -> dict:
        return {}  # layer -> (S [B, H, d_key, d_value], conv tail [B, k-1, H (2 d_key + d_value)])

    def layer(self, l: int, block, h: torch.Tensor, state: dict, step: Step) -> torch.Tensor:
        if str(l) in self.gdn:  # the chunk's C segments of each document, in order, as one token stream
            x = h.view(step.B, step.C * step.T, -1)
            y, state[l] = self.gdn[str(l)](x, state.get(l))
            h = h + y.view_as(h)
        return super().layer(l, block, h, state, step)


MEMORY = GDNMemory
