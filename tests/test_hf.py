"""CMR inside a pretrained Hugging Face causal LM (pipeline/models/hf.py), on tiny random configs of each
supported family (no download): the gate shut gives the bare LM's logits exactly, reading is causal across
windows and the memory carries information forward, only the memory trains, and a checkpoint round-trips
through `save_pretrained` / `from_pretrained`."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="the `hf` extra (pip install -e '.[hf]')")

from pipeline.errors import ConfigError  # noqa: E402
from pipeline.models.hf import build_hf_model  # noqa: E402

W, V = 8, 50
FAMILIES = {  # ctx: the LM's context, the window the HF path reads it in (W here: several windows per document)
    "gpt2": lambda ctx: transformers.GPT2Config(n_layer=3, n_embd=32, n_head=4, vocab_size=V, n_positions=ctx,
                                                bos_token_id=0, eos_token_id=0),
    "gpt_neox": lambda ctx: transformers.GPTNeoXConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                                                       intermediate_size=64, vocab_size=V, max_position_embeddings=ctx,
                                                       bos_token_id=0, eos_token_id=0),
    "llama": lambda ctx: transformers.LlamaConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                                                  num_key_value_heads=2, intermediate_size=64, vocab_size=V,
                                                  max_position_embeddings=ctx, bos_token_id=0, eos_token_id=0),
}
CMR = {"name": "cmr", "k": 2, "capacity": 8, "score_input": "block_input", "bptt_segments": 2}


def tiny_lm(family: str, seed: int = 0, ctx: int = W):
    torch.manual_seed(seed)
    return transformers.AutoModelForCausalLM.from_config(FAMILIES[family](ctx)).eval()


def windowed(lm, ids, window=W):
    """The bare LM reading each window of `window` tokens alone."""
    B, N = ids.shape
    with torch.no_grad():
        return lm(input_ids=ids.view(B * N // window, window), use_cache=False).logits.view(B, N, -1)


@pytest.fixture(params=sorted(FAMILIES))
def family(request):
    return request.param


def ids_(seed=1, B=2, S=4):
    return torch.randint(1, V, (B, S * W), generator=torch.Generator().manual_seed(seed))


def test_gate_shut_and_window_equal_the_bare_lm(family):
    lm = tiny_lm(family)
    ids = ids_()
    bare = windowed(lm, ids)
    shut = build_hf_model(lm, {**CMR, "gate_bias": float("-inf")}, W).eval()
    with torch.no_grad():
        assert torch.equal(shut(ids).logits, bare)
    win = build_hf_model(tiny_lm(family), {"name": "window"}, W).eval()
    with torch.no_grad():
        assert torch.equal(win(ids).logits, bare)


@pytest.mark.parametrize("ctx, window", [(2 * W, 2 * W), (2 * W + 3, 2 * W), (4 * W, 4 * W)])
def test_the_lm_reads_windows_of_its_own_context_in_whole_segments(family, ctx, window):
    """A pretrained LM with a context of several segments reads a document in windows of its context (rounded
    down to whole segments of the data): the bare `window` variant equals the LM on those windows, not on segments."""
    lm = tiny_lm(family, ctx=ctx)
    ids = ids_()  # 4 segments of W
    win = build_hf_model(lm, {"name": "window"}, W).eval()
    assert win.window == window and win.memory.backbone.window == window
    with torch.no_grad():
        assert torch.equal(win(ids).logits, windowed(lm, ids, window))
        assert not torch.allclose(win(ids).logits, windowed(lm, ids, W))


def test_an_lm_shorter_than_a_segment_is_refused(family):
    with pytest.raises(ConfigError, match=r"context \(4 tokens\) is shorter than backbone.window=8"):
        build_hf_model(tiny_lm(family, ctx=W // 2), {"name": "window"}, W)


def test_causal_across_windows_and_memory_carries_forward(family):
    torch.manual_seed(0)
    m = build_hf_model(tiny_lm(family), {**CMR, "gate_bias": 2.0}, W).eval()  # gate open
    ids = ids_()
    with torch.no_grad():
        a = m(ids).logits
        late = ids.clone()
        late[:, 2 * W + 3] = (late[:, 2 * W + 3] % (V - 1)) + 1  # a token of segment 2
        b = m(late).logits
        early = ids.clone()
        early[:, 1] = (early[:, 1] % (V - 1)) + 1  # a token of segment 0
        c = m(early).logits
    assert torch.equal(a[:, : 2 * W + 3], b[:, : 2 * W + 3])  # nothing before the change moves
    assert not torch.allclose(a[:, W:], c[:, W:])  # later windows read it through the memory
    bare = windowed(m.lm, early)
    assert torch.allclose(c[:, :W], bare[:, :W], atol=1e-6)  # segment 0 reads an empty memory


def test_only_the_memory_trains_and_gradients_reach_it(family):
    m = build_hf_model(tiny_lm(family), {**CMR, "gate_bias": 0.0}, W).train()
    assert not m.lm.training and m.memory.training
    out = m(ids_()).logits
    torch.nn.functional.cross_entropy(out.reshape(-1, V), ids_(2).reshape(-1)).backward()
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("memory.") for n in trainable)
    assert all(p.grad is None for p in m.lm.parameters())
    assert m.memory.scorer["0"].weight.grad.abs().sum() > 0 and m.memory.reweave["1"].kv.weight.grad.abs().sum() > 0
    assert m.num_parameters() == sum(p.numel() for p in m.memory.parameters())


def test_checkpoint_round_trip_through_save_pretrained(family, tmp_path):
    lm = tiny_lm(family)
    lm.save_pretrained(tmp_path / "lm")
    m = build_hf_model(transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "lm"), {**CMR, "gate_bias": 0.0}, W)
    with torch.no_grad():
        for p in m.memory.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    torch.save(m.memory.state_dict(), tmp_path / "memory.pt")
    again = build_hf_model(transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "lm"), {**CMR, "gate_bias": 0.0}, W)
    again.memory.load_state_dict(torch.load(tmp_path / "memory.pt"))
    ids = ids_()
    with torch.no_grad():
        assert torch.equal(m.eval()(ids).logits, again.eval()(ids).logits)


def test_a_lora_adapter_folder_trains_its_adapters_beside_the_memory(tmp_path):
    """`hf-pretrain --lora-rank` saves the base and an untrained peft adapter; from_pretrained(adapter folder)
    loads both; the adapted LM starts as the base LM (LoRA's B = 0), and its adapters, not the base, train with
    the memory (and alone for `window`, which then is no longer a frozen run)."""
    pytest.importorskip("peft", reason="the `hf` extra (peft)")
    from pipeline.studies.hf_pretrain import save_with_lora

    lm = tiny_lm("gpt2")
    save_with_lora(lm, tmp_path / "lm", tmp_path / "lm", 4, ["c_attn", "c_fc"])
    plain = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "lm" / "base")
    m = build_hf_model(transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "lm"),
                       {**CMR, "gate_bias": float("-inf")}, W).train()
    ids = ids_()
    with torch.no_grad():
        assert torch.equal(m.eval()(ids).logits, windowed(plain, ids))
    m.train()
    out = m(ids).logits
    torch.nn.functional.cross_entropy(out.reshape(-1, V), ids_(2).reshape(-1)).backward()
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    lora = {n for n in trainable if "lora_" in n}
    assert lora and trainable - lora == {n for n, _ in m.memory.named_parameters(prefix="memory")}
    assert all(p.grad is None for n, p in m.lm.named_parameters() if "lora_" not in n)  # the base stays frozen
    assert any(p.grad.abs().sum() > 0 for n, p in m.lm.named_parameters() if "lora_A" in n or "lora_B" in n)
    win = build_hf_model(transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "lm"), {"name": "window"}, W)
    assert win.num_parameters() == sum(p.numel() for n, p in win.named_parameters() if "lora_" in n) > 0


def test_unsupported_settings_are_refused():
    with pytest.raises(ConfigError, match="attention_input"):
        build_hf_model(tiny_lm("gpt2"), {**CMR, "score_input": "attention_input"}, W)
    opt = transformers.AutoModelForCausalLM.from_config(transformers.OPTConfig(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, ffn_dim=32, vocab_size=V, word_embed_proj_dim=16))
    with pytest.raises(ConfigError, match="not supported; supported"):
        build_hf_model(opt, CMR, W)


# ---------------------------------------------------------------------------------- in the study's pipeline
def test_hf_pretrain_then_train_and_evaluate_through_the_pipeline(tmp_path, monkeypatch):
    """The offline path, real end to end at tiny sizes: `hf-pretrain` saves a GPT-2 of the backbone's size
    with save_pretrained; build_model loads it (backbone.hf_model) with from_pretrained; the study's train()
    trains cmr's modules only and takes window as a frozen run (0 steps, validated and saved); the
    evaluation scores both; a checkpoint reloads to the same logits."""
    from omegaconf import OmegaConf

    from pipeline import train as T
    from pipeline.data.prepare import prepare
    from pipeline.evaluate import check_trained
    from pipeline.studies.hf_pretrain import main as pretrain_main
    from pipeline.models import build_model
    from pipeline.models.checkpoint import load_trained
    from test_train import tiny_config

    monkeypatch.setenv("WANDB_MODE", "disabled")
    cfg = tiny_config(tmp_path)
    prepare(cfg, quiet=True)
    cfg = OmegaConf.merge(cfg, {"backbone": {"hf_model": str(tmp_path / "lm")},
                                "models": {"cmr": {"score_input": "block_input"}}})
    params = tmp_path / "params.yaml"
    OmegaConf.save(cfg, params)
    from pipeline.data.store import load_split
    from pipeline.studies.hf_pretrain import windows

    rows, answers = windows(cfg.paths.data_dir, 32)  # the answer mask weighted by --answer-weight
    train = load_split(cfg.paths.data_dir, "train")
    want = [a for d in train for a in d["answers"]]
    got = rows[answers].tolist()
    assert rows.shape == answers.shape and rows.shape[1] == 32 and 0 < len(got) <= len(want)
    assert got == want[: len(got)]  # the marked tokens are the documents' answers, in order
    assert pretrain_main(["--params", str(params), "--steps", "5", "--context", "32"]) == 0  # two segments of 16
    assert (tmp_path / "lm" / "config.json").is_file() and (tmp_path / "lm" / "pretrain.json").is_file()
    assert pretrain_main(["--params", str(params), "--out", str(tmp_path / "bad"), "--context", "24"]) == 2
    assert not (tmp_path / "bad").exists()  # refused before anything is written

    w = T.train(cfg, "window", 0)
    assert w["frozen"] and w["steps"] == 0 and w["params"] == 0 and w["val_curve"]
    c = T.train(cfg, "cmr", 0)
    assert not c["frozen"] and c["steps"] == 10 and c["params"] > 0
    for v in ("window", "cmr"):
        check_trained(tmp_path / "exp" / "train" / v / "s0", v, 0)  # evaluate accepts both
    m, _ = load_trained(tmp_path / "exp" / "train" / "cmr" / "s0")
    ids = torch.randint(1, 20, (1, 48))
    fresh = build_model(cfg.backbone, cfg.models.cmr, m.lm.config.vocab_size)
    assert not torch.equal(fresh.eval()(ids).logits, m(ids).logits)  # trained memory weights were loaded ...
    assert torch.equal(fresh.lm(input_ids=ids[:, :16]).logits, m.lm(input_ids=ids[:, :16]).logits)  # ... on the
    # same frozen LM
    assert m.window == 32  # the LM's own context, two of the data's segments

    # what the memory costs the LM's text: the bare LM's loss is the LM's own, every prediction but the answers
    from pipeline.data.store import load_split
    from pipeline.studies.hf_perplexity import document_loss, measure, table

    doc = load_split(cfg.paths.data_dir, "recall_64")[0]
    x = torch.tensor(doc["input_ids"])[None]
    with torch.no_grad():
        own = torch.nn.functional.cross_entropy(windowed(m.lm, x, 32)[0, :-1], x[0, 1:], reduction="none")
    own[torch.tensor(doc["query_pos"])] = 0.0
    bare, _ = load_trained(tmp_path / "exp" / "train" / "window" / "s0")
    loss, k = document_loss(bare, doc["input_ids"], doc["query_pos"])
    assert k == 63 - len(doc["query_pos"]) and abs(loss - float(own.sum())) < 1e-3
    df = table(measure(cfg, [64], 2))
    assert sorted(df.variant) == ["cmr", "window"] and (df[df.variant == "window"].ppl_vs_bare_lm == 1.0).all()
    assert (df.tokens == 2 * k).all() and (df.ppl > 1.0).all()


def test_hf_backbone_config_errors(tmp_path):
    from pipeline.models import build_model

    tiny_lm("gpt2").save_pretrained(tmp_path / "lm")
    with pytest.raises(ConfigError, match="not the data's tokenizer"):
        build_model({"hf_model": str(tmp_path / "lm"), "window": W}, {"name": "window"}, V + 1)
    with pytest.raises(ConfigError, match="could not be loaded"):
        build_model({"hf_model": str(tmp_path / "nope"), "window": W}, {"name": "window"}, V)
    with pytest.raises(ConfigError, match="`xl` on a pretrained Hugging Face backbone"):
        build_model({"hf_model": str(tmp_path / "lm"), "window": W}, {"name": "xl"}, V)
    assert build_model({"hf_model": str(tmp_path / "lm"), "window": W}, {"name": "window"}, V).num_parameters() == 0
