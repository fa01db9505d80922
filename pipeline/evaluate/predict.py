"""Shared by every accuracy table: run a model over one split and record, per query, the greedy
prediction at `query_pos` (the logits there predict input_ids[query_pos + 1] == answer).

Documents are batched only with documents of the same length, so no padding (and no padding mask
the memory models would have to honour) is ever needed.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Mapping

import pandas as pd

from pipeline.errors import DataError

# Columns of predictions.parquet, in this order (docs/ and the report read them by name).
PRED_COLUMNS = [
    "variant", "seed", "split", "task", "length", "doc_id", "query_idx", "query_type",
    "answer", "pred", "correct", "distance", "query_pos", "answer_train_count", "n_turns",
]
_INT_COLUMNS = ["seed", "length", "query_idx", "answer", "pred", "distance", "query_pos", "answer_train_count",
                "n_turns"]
REQUIRED_SPLIT_COLUMNS = ["doc_id", "task", "input_ids", "query_pos", "answers", "query_type", "distance", "n_turns"]


def empty_predictions() -> pd.DataFrame:
    return _typed(pd.DataFrame({c: [] for c in PRED_COLUMNS}))


def _typed(df: pd.DataFrame) -> pd.DataFrame:
    df = df[PRED_COLUMNS].copy()
    for c in _INT_COLUMNS:
        df[c] = df[c].astype("int64")
    df["correct"] = df["correct"].astype(bool)
    for c in ["variant", "split", "task", "doc_id", "query_type"]:
        df[c] = df[c].astype(str)
    return df


def normalize_counts(counts: Mapping[Any, Any] | None) -> dict[int, int]:
    """train_counts.json has string keys (JSON); queries carry int token ids."""
    return {int(k): int(v) for k, v in (counts or {}).items()}


def logits_of(output: Any):
    """ModelOutput-like (`.logits`), a dict with 'logits', or a bare tensor."""
    if hasattr(output, "logits"):
        return output.logits
    if isinstance(output, Mapping) and "logits" in output:
        return output["logits"]
    return output


def _check_doc(split: str, i: int, ids: list[int], qpos: list[int], answers: list[int],
               qtypes: list[str], dist: list[int]) -> None:
    """A corrupt split must fail loudly, not be scored."""
    n = len(ids)
    if not (len(qpos) == len(answers) == len(qtypes) == len(dist)):
        raise DataError(f"split '{split}' doc {i}: query_pos/answers/query_type/distance lengths differ "
                        f"({len(qpos)}/{len(answers)}/{len(qtypes)}/{len(dist)})")
    for q, a in zip(qpos, answers):
        if not 0 <= q < n - 1:
            raise DataError(f"split '{split}' doc {i}: query_pos {q} outside [0, {n - 2}]")
        if ids[q + 1] != a:
            raise DataError(f"split '{split}' doc {i}: input_ids[query_pos+1]={ids[q + 1]} != answer {a} "
                            f"at query_pos {q}")


def predict_split(
    model: Any,
    ds: Any,
    *,
    variant: str,
    seed: int,
    split: str,
    task: str | None = None,
    length: int | None = None,
    batch_size: int = 8,
    train_counts: Mapping[Any, Any] | None = None,
    device: str = "cpu",
) -> pd.DataFrame:
    """One row per query of `ds` (a datasets.Dataset with the contract's columns).

    task: the evaluation id written to the `task` column (recall/rare/numeric/dialogue), so the rare
    split's recall documents are not mixed into Table II. None -> the document's own task.
    length: the table's row key (N for recall/numeric, turns for dialogue). None -> the document's
    token count, or n_turns for dialogue documents.
    """
    missing = [c for c in REQUIRED_SPLIT_COLUMNS if c not in ds.column_names]
    if missing:
        raise DataError(f"split '{split}' lacks columns {missing}; has {ds.column_names}")
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    counts = normalize_counts(train_counts)
    cols = ds.select_columns(REQUIRED_SPLIT_COLUMNS)[:]  # dict: column -> list over documents

    # Group document indices by token length, in order of first appearance.
    groups: "OrderedDict[int, list[int]]" = OrderedDict()
    for i, ids in enumerate(cols["input_ids"]):
        _check_doc(split, i, ids, cols["query_pos"][i], cols["answers"][i], cols["query_type"][i],
                   cols["distance"][i])
        groups.setdefault(len(ids), []).append(i)

    preds = _argmax_at_queries(model, cols, groups, batch_size, device)
    return _typed(pd.DataFrame(_rows(cols, preds, counts, variant, seed, split, task, length)))


def _argmax_at_queries(model: Any, cols: dict, groups: Mapping[int, list[int]], batch_size: int,
                       device: str) -> list[list[int]]:
    """The model's argmax token at each query position of every document, in batches of equal length."""
    import torch

    preds: list = [None] * len(cols["doc_id"])
    model.eval()
    with torch.no_grad():
        for n_tok, idxs in groups.items():
            for start in range(0, len(idxs), batch_size):
                chunk = idxs[start:start + batch_size]
                x = torch.tensor([cols["input_ids"][i] for i in chunk], dtype=torch.long, device=device)  # [B, N]
                logits = logits_of(model(x))  # [B, N, V]
                if logits.dim() != 3 or tuple(logits.shape[:2]) != (len(chunk), n_tok):
                    raise DataError(f"model returned logits of shape {tuple(logits.shape)} for input "
                                    f"{tuple(x.shape)}; expected [B, N, V]")
                for b, i in enumerate(chunk):
                    q = torch.tensor(cols["query_pos"][i], dtype=torch.long, device=logits.device)  # [Q]
                    preds[i] = logits[b].index_select(0, q).argmax(-1).tolist()  # [Q]
    return preds


def _rows(cols: dict, preds: list[list[int]], counts: Mapping[int, int], variant: str, seed: int, split: str,
          task: str | None, length: int | None) -> dict[str, list]:
    """The prediction table's columns: one entry per query."""
    rows: dict[str, list] = {c: [] for c in PRED_COLUMNS}
    for i in range(len(cols["doc_id"])):
        n_turns = int(cols["n_turns"][i])
        doc_task = str(cols["task"][i])
        if length is not None:
            key = int(length)
        elif doc_task == "dialogue":
            key = n_turns
        else:
            key = len(cols["input_ids"][i])
        for j, (a, p) in enumerate(zip(cols["answers"][i], preds[i])):
            rows["variant"].append(variant)
            rows["seed"].append(int(seed))
            rows["split"].append(split)
            rows["task"].append(task or doc_task)
            rows["length"].append(key)
            rows["doc_id"].append(str(cols["doc_id"][i]))
            rows["query_idx"].append(j)
            rows["query_type"].append(str(cols["query_type"][i][j]))
            rows["answer"].append(int(a))
            rows["pred"].append(int(p))
            rows["correct"].append(int(a) == int(p))
            rows["distance"].append(int(cols["distance"][i][j]))
            rows["query_pos"].append(int(cols["query_pos"][i][j]))
            rows["answer_train_count"].append(counts.get(int(a), 0))
            rows["n_turns"].append(n_turns)
    return rows


def load_split_docs(data_dir: str, name: str, max_docs: int | None = None):
    """pipeline.data.load_split, cut to the first `max_docs` documents (profiles that evaluate less)."""
    from pipeline.data import load_split

    ds = load_split(data_dir, name)
    if max_docs is not None and len(ds) > max_docs:
        ds = ds.select(range(max_docs))
    return ds


def predict_splits(
    model: Any,
    data_dir: str,
    splits: list[tuple[str, int | None]],
    *,
    task: str,
    variant: str,
    seed: int,
    batch_size: int,
    max_docs: int | None,
    train_counts: Mapping[Any, Any] | None,
    device: str = "cpu",
    loader: Any = None,
) -> pd.DataFrame:
    """predict_split over several (split name, table key) pairs, concatenated."""
    loader = loader or load_split_docs
    frames = [
        predict_split(model, loader(data_dir, name, max_docs), variant=variant, seed=seed, split=name,
                      task=task, length=length, batch_size=batch_size, train_counts=train_counts, device=device)
        for name, length in splits
    ]
    return pd.concat(frames, ignore_index=True) if frames else empty_predictions()


def accuracy_table(df: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Rows: variant, seed, *keys, n (queries), correct, accuracy (fraction in [0, 1])."""
    by = ["variant", "seed", *keys]
    cols = [*by, "n", "correct", "accuracy"]
    if df.empty:
        return pd.DataFrame({c: [] for c in cols})
    out = (df.groupby(by, sort=True, observed=True)["correct"]
             .agg(n="size", correct="sum").reset_index())
    out["n"] = out["n"].astype("int64")
    out["correct"] = out["correct"].astype("int64")
    out["accuracy"] = out["correct"] / out["n"]
    return out[cols]


class ByLengthTask:
    """A task scored by document length N from splits named `<task>_<N>` (recall, numeric):
    the splits it reads, its rows of the predictions, and its accuracy tables."""

    def __init__(self, task: str):
        self.task = task

    def splits(self, cfg: Any) -> list[tuple[str, int]]:
        return [(f"{self.task}_{int(n)}", int(n)) for n in cfg.data.eval_lengths]

    def select(self, pred: pd.DataFrame) -> pd.DataFrame:
        """This table's rows (task column = evaluation id, so the rare split's recall docs are 'rare')."""
        return pred[pred["task"] == self.task]

    def score(self, pred: pd.DataFrame) -> pd.DataFrame:
        """Rows: variant, seed, length, n, correct, accuracy."""
        return accuracy_table(self.select(pred), ["length"])

    def score_by_type(self, pred: pd.DataFrame) -> pd.DataFrame:
        """Rows: variant, seed, length, query_type, n, correct, accuracy."""
        return accuracy_table(self.select(pred), ["length", "query_type"])

    def predict(self, model: Any, cfg: Any, *, variant: str, seed: int, train_counts: Any,
                device: str = "cpu", loader: Any = None) -> pd.DataFrame:
        return predict_splits(model, cfg.paths.data_dir, self.splits(cfg), task=self.task, variant=variant,
                              seed=seed, batch_size=cfg.eval.batch_size, max_docs=cfg.eval.max_docs_per_split,
                              train_counts=train_counts, device=device, loader=loader)
