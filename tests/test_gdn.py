"""`gdn` (Gated DeltaNet): the chunked delta rule against its token-by-token definition, and the invariants every
memory keeps (causality, streaming = whole document, determinism, bounded state, config checks)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from pipeline.config.schema import BackboneConfig, MemoryConfig
from pipeline.errors import ConfigError
from pipeline.models.base import Memory, MemoryLM
from pipeline.models.gdn import GDNConfig, GDNMemory, gated_delta_rule_chunked, gated_delta_rule_recurrent

torch.set_num_threads(1)
V = 50
TINY = BackboneConfig(d_model=16, n_layers=2, n_heads=2, d_ff=32, window=4, max_positions=256)
SMALL = {"heads": 2, "d_key": 4, "d_value": 8, "chunk": 8}  # state 2 layers * 2 * 4 * 8 = 128 floats


def make(seed: int = 0, backbone: BackboneConfig = TINY, loud: bool = True, **cfg) -> MemoryLM:
    """As build_model does: the memory is built on a forked RNG, so the backbone is window's for the same seed.
    loud: a large output projection, so that equalities cannot hold because the memory adds nearly nothing."""
    torch.manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        memory = GDNMemory(backbone, GDNConfig(**{**SMALL, **cfg}))
    m = MemoryLM(backbone, memory, V).eval()
    if loud:
        with torch.no_grad():
            for g in m.memory.gdn.values():
                g.out.weight.normal_(0, 0.5)
    return m


def window(seed: int = 0) -> MemoryLM:
    torch.manual_seed(seed)
    return MemoryLM(TINY, Memory(TINY, MemoryConfig()), V).eval()


def ids(B: int, N: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, V, (B, N), generator=torch.Generator().manual_seed(seed))


def delta_inputs(B=2, H=3, L=23, dk=5, dv=7, sharp=False, dtype=torch.float64, seed=0):
    """Random q, k (unit), v, log_alpha, beta, initial state; sharp: decays down to exp(-60) per token."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype)
    q, k = F.normalize(r(B, H, L, dk), dim=-1), F.normalize(r(B, H, L, dk), dim=-1)
    log_alpha = -F.softplus(r(B, H, L)) * (30.0 if sharp else 1.0)
    return q, k, r(B, H, L, dv), log_alpha, torch.sigmoid(r(B, H, L)), r(B, H, dk, dv)


# ---- the delta rule --------------------------------------------------------------------------------
@pytest.mark.parametrize("chunk", [1, 4, 16])
@pytest.mark.parametrize("L,sharp", [(1, False), (13, False), (37, False), (37, True)])
def test_chunked_equals_recurrence_values_and_gradients(chunk, L, sharp):
    inputs = [t.requires_grad_() for t in delta_inputs(L=L, sharp=sharp)]
    want = gated_delta_rule_recurrent(*inputs)
    got = gated_delta_rule_chunked(*inputs, chunk=chunk)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)
    go, gS = torch.randn_like(want[0]), torch.randn_like(want[1])
    g_want = torch.autograd.grad(want, inputs, (go, gS))
    g_got = torch.autograd.grad(got, inputs, (go, gS))
    for name, a, b in zip(("q", "k", "v", "log_alpha", "beta", "state"), g_got, g_want):
        assert torch.isfinite(a).all(), name
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-8, msg=name)


def test_recurrence_is_the_stated_rule():
    """S_t = alpha_t S_{t-1} + beta_t k_t (v_t - alpha_t S_{t-1}^T k_t)^T, o_t = S_t^T q_t / sqrt(d_key),
    written with matrices for one head."""
    q, k, v, la, beta, S0 = delta_inputs(B=1, H=1, L=6)
    o, S_end = gated_delta_rule_recurrent(q, k, v, la, beta, S0)
    S = S0[0, 0]
    for t in range(6):
        a, b, kt = la[0, 0, t].exp(), beta[0, 0, t], k[0, 0, t, :, None]
        S = a * S + b * kt @ (v[0, 0, t, None, :] - a * kt.T @ S)
        torch.testing.assert_close(o[0, 0, t], (S.T @ q[0, 0, t]) / 5 ** 0.5)
    torch.testing.assert_close(S_end[0, 0], S)


def test_matches_fla_reference():
    """fla's own reference recurrence and chunked form (flash-linear-attention; runs where it is installed)."""
    naive = pytest.importorskip("fla.ops.gated_delta_rule.naive")
    q, k, v, la, beta, S0 = delta_inputs(L=45, dtype=torch.float32)
    o, S = gated_delta_rule_chunked(q, k, v, la, beta, S0, chunk=16)
    tb = lambda x: x.transpose(1, 2)  # fla: [B, T, H, ...]
    for ref in (naive.naive_recurrent_gated_delta_rule(tb(q), tb(k), tb(v), tb(beta), tb(la), initial_state=S0,
                                                       output_final_state=True),
                naive.naive_chunk_gated_delta_rule(tb(q), tb(k), tb(v), tb(la), tb(beta), chunk_size=16,
                                                   initial_state=S0, output_final_state=True)):
        torch.testing.assert_close(o, tb(ref[0]), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(S, ref[1], atol=1e-5, rtol=1e-5)


# ---- the model -------------------------------------------------------------------------------------
@pytest.mark.parametrize("cfg", [{}, {"conv_kernel": 0}, {"layers": [1]}, {"chunk": 3, "positions": "learned"}])
def test_causal(cfg):
    """Changing token t+1.. never moves logits <= t, inside or across segments (the memory reads the segment too)."""
    cfg = dict(cfg)
    bb = dataclasses.replace(TINY, positions=cfg.pop("positions", "rotary"))
    m = make(backbone=bb, **cfg)
    x = ids(2, 23)  # not a multiple of W=4
    base = m(x).logits
    for t in (0, 2, 3, 4, 9, 17):
        y = x.clone()
        y[:, t + 1 :] = (y[:, t + 1 :] + 7) % V
        out = m(y).logits
        assert torch.equal(out[:, : t + 1], base[:, : t + 1]), f"logits <= {t} changed"
        assert not torch.allclose(out[:, t + 1 :], base[:, t + 1 :])


def test_streaming_equals_whole_document():
    """Segment by segment (chunk_segments=1), 3 at a time, and any delta-rule chunk size: the same logits."""
    m = make()
    x = ids(2, 31)
    a = m(x).logits
    for chunk in (1, 3):
        torch.testing.assert_close(m(x, chunk_segments=chunk).logits, a, atol=1e-5, rtol=1e-5)
    for g in m.memory.gdn.values():
        g.chunk = 5
    torch.testing.assert_close(m(x).logits, a, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(m(x, return_attention=True).logits, a, atol=1e-5, rtol=1e-5)


def test_memory_reaches_earlier_segments():
    """The last segment's loss reaches the first segment's tokens (window's never does)."""
    W = TINY.window
    m = make().train()
    e = {}

    def keep(mod, inp, out):
        out.retain_grad()
        e["e"] = out

    m.tok_emb.register_forward_hook(keep)
    m(ids(2, 4 * W)).logits[:, 3 * W :].sum().backward()
    assert e["e"].grad[:, :W].abs().sum() > 0
    for name, p in m.memory.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient reaches memory.{name}"


def test_silent_output_equals_window_exactly():
    """Same seed, same backbone as window; with W_o = 0 the memory adds exactly nothing."""
    w, m = window(seed=3), make(seed=3)
    x = ids(2, 19)
    assert not torch.equal(m(x).logits, w(x).logits)
    with torch.no_grad():
        for g in m.memory.gdn.values():
            g.out.weight.zero_()
    assert torch.equal(m(x).logits, w(x).logits)


def test_deterministic_and_reset_between_documents():
    a, b = make(seed=11, loud=False), make(seed=11, loud=False)
    for (ka, ta), (kb, tb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(ta, tb), ka
    x = ids(2, 19)
    assert torch.equal(a(x).logits, b(x).logits)
    d1, d2 = ids(1, 30, seed=3), ids(1, 30, seed=4)
    alone = a(d2).logits
    a(d1)
    assert torch.equal(a(d2).logits, alone)  # state resets between calls
    torch.testing.assert_close(a(torch.cat([d1, d2])).logits[1:], alone, atol=1e-6, rtol=1e-6)  # and documents


def test_state_is_bounded():
    """The carried state has memory_floats floats per document, however long the document."""
    m = make()
    assert m.memory_floats() == 2 * 2 * 4 * 8
    seen = []
    m.memory.end_chunk = lambda state, step: seen.append(sum(S.numel() for S, _ in state.values()) // step.B)
    for N in (3, 40, 200):
        m(ids(2, N))
        m(ids(2, N), chunk_segments=1)
    assert set(seen) == {m.memory_floats()}
    assert GDNConfig().memory_floats(BackboneConfig()) == 2048  # the defaults: cmr's banks
    assert GDNConfig(layers=[1]).memory_floats(BackboneConfig()) == 1024


# ---- config ----------------------------------------------------------------------------------------
def test_defaults_pass_the_checks():
    GDNConfig().check(BackboneConfig())
    GDNConfig(layers=[1, 0], conv_kernel=0).check(BackboneConfig())
    assert sorted(make(layers=[1]).memory.gdn) == ["1"]


@pytest.mark.parametrize("over,key", [
    ({"heads": 0}, "heads"),
    ({"heads": 2.5}, "heads"),
    ({"heads": True}, "heads"),
    ({"d_key": 0}, "d_key"),
    ({"d_value": -1}, "d_value"),
    ({"conv_kernel": -1}, "conv_kernel"),
    ({"chunk": 0}, "chunk"),
    ({"layers": []}, "layers"),
    ({"layers": 1}, "layers"),
    ({"layers": [2]}, "layers"),
    ({"layers": [-1]}, "layers"),
    ({"layers": [0, 0]}, "layers"),
])
def test_bad_config_is_one_clear_line(over, key):
    with pytest.raises(ConfigError) as e:
        GDNConfig(**over).check(TINY)
    assert f"models.gdn.{key} = " in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ConfigError):
        GDNMemory(TINY, GDNConfig(**over))
