"""Table III: what memory costs at inference. Per length N: milliseconds per token of a forward
pass (batch 1, no grad, after warm-up, median of repeats, at a fixed thread count), and the peak
bytes of tensors alive during that forward; per model: parameters, floats held in memory state,
and the training throughput measured by the train stage.

Peak memory, what it measures (CPU): the largest total size of tensor storages that aten ops
produce during one forward and that are alive at the same moment (activations, attention
weights, logits, memory banks/caches), tracked op by op with a TorchDispatchMode. Parameters,
buffers and the input are excluded (they are reported as param_bytes). Scratch memory that a
fused kernel allocates and frees inside one op is not seen, nor is Python/allocator overhead;
process RSS is not used because it moves in allocator-sized steps and never goes down.
On CUDA: torch.cuda.max_memory_allocated minus what was allocated before the forward.
"""

from __future__ import annotations

import json
import statistics
import time
import weakref
from pathlib import Path
from typing import Any, Callable, Iterable

import pandas as pd

from pipeline.errors import DataError

PEAK_MEMORY_METHOD = (
    "peak total bytes of tensor storages produced by aten ops during one forward and alive at once "
    "(TorchDispatchMode tracking; parameters, buffers and input excluded; kernel-internal scratch not seen)"
)
PEAK_MEMORY_METHOD_CUDA = "torch.cuda.max_memory_allocated during one forward minus memory allocated before it"


def _live_tensor_mode(exclude: set[int]):
    """A dispatch mode that keeps a running total of live op-output storage bytes and its peak."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    class LiveTensorBytes(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.live: dict[int, list[int]] = {}  # storage data_ptr -> [tensors alive on it, nbytes]
            self.current = 0
            self.peak = 0

        def _release(self, key: int) -> None:
            entry = self.live.get(key)
            if entry is None:
                return
            entry[0] -= 1
            if entry[0] == 0:
                self.current -= entry[1]
                del self.live[key]

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in tree_flatten(out)[0]:
                if not isinstance(t, torch.Tensor):
                    continue
                storage = t.untyped_storage()
                key = storage.data_ptr()
                if key == 0 or key in exclude:
                    continue
                entry = self.live.get(key)
                if entry is None:
                    entry = self.live[key] = [0, storage.nbytes()]
                    self.current += entry[1]
                    self.peak = max(self.peak, self.current)
                entry[0] += 1
                weakref.finalize(t, self._release, key)
            return out

    return LiveTensorBytes()


def count_parameters(model: Any) -> int:
    if hasattr(model, "num_parameters"):
        return int(model.num_parameters())
    return int(sum(p.numel() for p in model.parameters()))


def peak_forward_bytes(model: Any, x: Any) -> int:
    """Peak bytes of one no-grad forward on `x` (see the module docstring for what is counted)."""
    import torch

    with torch.no_grad():
        if x.is_cuda:
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            model(x)
            torch.cuda.synchronize()
            return int(torch.cuda.max_memory_allocated() - base)
        exclude = {p.untyped_storage().data_ptr() for p in model.parameters()}
        exclude |= {b.untyped_storage().data_ptr() for b in model.buffers()}
        exclude.add(x.untyped_storage().data_ptr())
        mode = _live_tensor_mode(exclude)
        with mode:
            out = model(x)
        del out
        return int(mode.peak)


def time_forward(model: Any, x: Any, *, warmup: int, repeats: int) -> list[float]:
    """Seconds per forward for each of `repeats` timed calls, after `warmup` untimed ones."""
    import torch

    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    times: list[float] = []
    with torch.no_grad():
        for _ in range(warmup):
            model(x)
        sync()
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(x)
            sync()
            times.append(time.perf_counter() - t0)
    return times


def measure(
    model: Any,
    lengths: Iterable[int],
    make_input: Callable[[int], Any],
    *,
    warmup: int = 2,
    repeats: int = 5,
    batch_size: int = 1,
    measure_memory: bool = True,
    device: str = "cpu",
) -> dict[str, Any]:
    """Cost of `model` at each length. make_input(N) -> LongTensor[N] or [1, N] (one document).

    ms_per_token = median forward seconds * 1000 / (batch_size * N).
    """
    import torch

    model.eval()
    ms_per_token: dict[str, float] = {}
    repeats_ms: dict[str, list[float]] = {}
    peak: dict[str, int] = {}
    cuda = False
    for n in lengths:
        x = make_input(int(n))
        x = x.reshape(1, -1).expand(batch_size, -1).contiguous().to(device)  # [B, N]
        cuda = cuda or x.is_cuda
        secs = time_forward(model, x, warmup=warmup, repeats=repeats)
        per_tok = [s * 1000.0 / (batch_size * int(n)) for s in secs]
        ms_per_token[str(n)] = float(statistics.median(per_tok))
        repeats_ms[str(n)] = per_tok
        if measure_memory:
            peak[str(n)] = peak_forward_bytes(model, x)
    params = count_parameters(model)
    param_bytes = int(sum(p.numel() * p.element_size() for p in model.parameters()))
    memory_floats = int(model.memory_floats()) if hasattr(model, "memory_floats") else None
    return {
        "ms_per_token": ms_per_token,
        "ms_per_token_repeats": repeats_ms,
        "peak_bytes": peak,
        # one number per model for the report: the peak at the longest measured length, in MB (1e6 bytes)
        "peak_memory_mb": (peak[max(peak, key=int)] / 1e6) if peak else None,
        "peak_memory_method": (PEAK_MEMORY_METHOD_CUDA if cuda else PEAK_MEMORY_METHOD) if measure_memory else None,
        "params": params,
        "param_bytes": param_bytes,
        "memory_floats": memory_floats,
        "threads": torch.get_num_threads(),
        "batch_size": batch_size,
        "warmup": warmup,
        "repeats": repeats,
        "device": "cuda" if cuda else "cpu",
    }


def measure_round_robin(
    models: dict[str, Any],
    lengths: Iterable[int],
    make_input: Callable[[int], Any],
    *,
    warmup: int = 2,
    repeats: int = 5,
    batch_size: int = 1,
    measure_memory: bool = True,
    device: str = "cpu",
) -> dict[str, dict[str, Any]]:
    """`measure` for several models at once, timed in turns: each repeat times one forward of every
    model (in a rotated order) before the next repeat, so a slow spell of the machine (another
    process, frequency scaling) lands on all models alike instead of on whichever ran then.
    Timing models in separate processes minutes apart gave cmr/window ratios of 1.3x-3.2x on the
    same code; in turns they agree to a few percent. Returns {name: measure()-style dict}."""
    import torch

    names = list(models)
    out = {name: measure(models[name], [], make_input, warmup=0, repeats=0, batch_size=batch_size,
                         measure_memory=False, device=device) for name in names}
    for n in lengths:
        x = make_input(int(n))
        x = x.reshape(1, -1).expand(batch_size, -1).contiguous().to(device)  # [B, N]
        sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
        secs: dict[str, list[float]] = {name: [] for name in names}
        with torch.no_grad():
            for name in names:
                models[name].eval()
                for _ in range(warmup):
                    models[name](x)
            for r in range(repeats):
                for i in range(len(names)):
                    name = names[(i + r) % len(names)]
                    sync()
                    t0 = time.perf_counter()
                    models[name](x)
                    sync()
                    secs[name].append(time.perf_counter() - t0)
        for name in names:
            per_tok = [t * 1000.0 / (batch_size * int(n)) for t in secs[name]]
            o = out[name]
            o["ms_per_token"][str(n)] = float(statistics.median(per_tok))
            o["ms_per_token_repeats"][str(n)] = per_tok
            if measure_memory:
                o["peak_bytes"][str(n)] = peak_forward_bytes(models[name], x)
            o["device"] = "cuda" if x.is_cuda else "cpu"
    for name in names:
        o = out[name]
        peak = o["peak_bytes"]
        o["peak_memory_mb"] = (peak[max(peak, key=int)] / 1e6) if peak else None
        o["peak_memory_method"] = ((PEAK_MEMORY_METHOD_CUDA if o["device"] == "cuda" else PEAK_MEMORY_METHOD)
                                   if measure_memory else None)
        o["warmup"], o["repeats"], o["timing"] = warmup, repeats, "round-robin over " + ", ".join(names)
    return out


def train_throughput(train_dir: str | Path) -> float | None:
    """train_tokens_per_s from the train stage's metrics.json (None if it did not record it)."""
    path = Path(train_dir) / "metrics.json"
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text()).get("train_tokens_per_s")
    except (OSError, json.JSONDecodeError, AttributeError):
        return None
    return float(value) if value is not None else None


def score(overhead: dict[str, Any], variant: str, seed: int) -> pd.DataFrame:
    """Rows: variant, seed, length, ms_per_token, peak_bytes (NaN when not measured), params,
    train_tokens_per_s. The CMR / window ratios need both variants: the report computes them."""
    rows = []
    for n, ms in overhead["ms_per_token"].items():
        rows.append({
            "variant": variant, "seed": int(seed), "length": int(n), "ms_per_token": float(ms),
            "peak_bytes": overhead.get("peak_bytes", {}).get(n, float("nan")),
            "params": overhead.get("params"), "train_tokens_per_s": overhead.get("train_tokens_per_s"),
        })
    cols = ["variant", "seed", "length", "ms_per_token", "peak_bytes", "params", "train_tokens_per_s"]
    return pd.DataFrame(rows, columns=cols).sort_values("length", ignore_index=True)


def input_maker(data_dir: str | Path, vocab_size: int | None, seed: int = 0,
                loader: Callable[[str, str], Any] | None = None) -> Callable[[int], Any]:
    """make_input for `measure`: the first recall_<N> document when that split exists (real text
    through the real memory path), else seeded random token ids in [0, vocab_size).
    `make.sources[str(N)]` records which one was used (written to overhead.json)."""
    import torch


    def make(n: int):
        if loader is not None:
            try:
                ds = loader(str(data_dir), f"recall_{n}")
            except DataError:  # no such split (a length the data stage did not build)
                ds = None
            if ds is not None and len(ds) > 0 and len(ds[0]["input_ids"]) == n:
                make.sources[str(n)] = f"recall_{n}[0]"
                return torch.tensor(ds[0]["input_ids"], dtype=torch.long)
        if not vocab_size:
            raise DataError(f"overhead: no recall_{n} document of {n} tokens and no vocabulary size "
                            "to draw random ids from")
        make.sources[str(n)] = f"random ids (seed {seed + n}, vocab {vocab_size})"
        g = torch.Generator().manual_seed(seed + n)
        return torch.randint(0, vocab_size, (n,), generator=g)

    make.sources = {}  # type: ignore[attr-defined]
    return make


def vocab_size_of(data_dir: str, model: Any) -> int | None:
    """For random overhead inputs only: the tokenizer's size, else the model's, else None."""
    try:
        from pipeline.data import load_tokenizer

        return int(load_tokenizer(data_dir).get_vocab_size())
    except (DataError, OSError):
        return getattr(model, "vocab_size", None)


def run_stage(cfg: Any) -> list[Path]:
    """The `overhead` DVC stage: every trained (variant, seed) of the study timed in turns on the
    same inputs; writes experiments/overhead/<variant>/s<seed>/overhead.json (evaluate's format)."""
    import torch

    from pipeline import paths
    from pipeline.evaluate.trained import check_trained, resolve_device
    from pipeline.evaluate.predict import load_split_docs
    from pipeline.io import atomic_dir, atomic_write_json, write_stage_time
    from pipeline.models.checkpoint import load_trained

    t0 = time.perf_counter()
    ocfg = cfg.eval.overhead
    device = resolve_device(cfg.eval.device)
    torch.set_num_threads(int(cfg.eval.threads))
    runs = [(v, int(s)) for v in cfg.study.variants for s in cfg.study.seeds]
    models = {}
    for v, s in runs:
        tdir = paths.run_dir(cfg, "train", v, s)
        check_trained(tdir, v, s)
        models[paths.run_name(v, s)] = load_trained(tdir)[0].to(device)
    data_dir = str(cfg.paths.data_dir)
    make = input_maker(data_dir, vocab_size_of(data_dir, next(iter(models.values()))), seed=0,
                       loader=lambda d, n: load_split_docs(d, n, 1))
    res = measure_round_robin(models, list(ocfg.lengths), make, warmup=int(ocfg.warmup),
                              repeats=int(ocfg.repeats), batch_size=int(ocfg.batch_size),
                              measure_memory=bool(ocfg.measure_memory), device=device)
    written = []
    for v, s in runs:
        oh = res[paths.run_name(v, s)]
        oh["inputs"] = dict(make.sources)
        oh["train_tokens_per_s"] = train_throughput(paths.run_dir(cfg, "train", v, s))
        oh["variant"], oh["seed"] = v, s
        out = paths.run_dir(cfg, "overhead", v, s)
        with atomic_dir(out) as tmp:
            atomic_write_json(tmp / "overhead.json", oh)
            score(oh, v, s).to_csv(tmp / "overhead.csv", index=False)
        written.append(out)
    write_stage_time(paths.experiments_dir(cfg) / "overhead", t0, runs=[paths.run_name(v, s) for v, s in runs])
    return written


def main(argv: list[str] | None = None) -> int:
    """`cmr-repro overhead [--params params.yaml] [key=value ...]` (the DVC stage)."""
    from pipeline import stage_cli

    args = stage_cli.parse(stage_cli.parser("overhead", "Table III: time every trained model of the study in turns."),
                           argv)

    def body() -> None:
        for out in run_stage(stage_cli.load_config(args)):
            print(f"wrote {out}")

    return stage_cli.run(body)


if __name__ == "__main__":
    raise SystemExit(main())
