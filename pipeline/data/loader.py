"""The training data as Lightning sees them: one split as tensors, the curriculum batch sampler (documents of
a growing number of segments), and the DataModule serving the train split and the validation splits."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import lightning as L
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from pipeline.config.access import cfg_get
from pipeline.errors import ConfigError, DataError
from pipeline.config.train import QUERY_TYPES, VAL_SPLITS, curriculum_limit

TYPE_INDEX = {name: i for i, name in enumerate(QUERY_TYPES)}
REQUIRED_COLUMNS = ("input_ids", "query_pos", "answers", "query_type")


def _flat(table: Any, column: str) -> tuple[pa.Array, np.ndarray]:
    """A list column as (all values in row order, offsets [n_rows + 1]): row i is values[off[i]:off[i+1]]."""
    col = table.column(column)
    lengths = pc.list_value_length(col).to_numpy(zero_copy_only=False)
    return pc.list_flatten(col), np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)


def _ints(table: Any, column: str) -> tuple[np.ndarray, np.ndarray]:
    values, off = _flat(table, column)
    return values.to_numpy(zero_copy_only=False), off


def _type_index(table: Any) -> tuple[np.ndarray, np.ndarray]:
    """query_type as each query's index in QUERY_TYPES (-1: unknown), with offsets."""
    names, off = _flat(table, "query_type")
    index = pc.index_in(names, value_set=pa.array(QUERY_TYPES, names.type)).fill_null(-1)
    return index.to_numpy(zero_copy_only=False), off


def _identity(batch: Any) -> Any:
    return batch


class DocumentSet(torch.utils.data.Dataset):
    """One split as tensors. `__getitems__` stacks a batch of equal-length documents directly
    (no padding of input_ids; queries padded with -1 to the batch's largest query count)."""

    def __init__(self, ds: Any, window: int, split: str = "?"):
        missing = [c for c in REQUIRED_COLUMNS if c not in ds.column_names]
        if missing:
            raise DataError(f"split {split!r} lacks columns {missing}; has {ds.column_names}")
        if len(ds) == 0:
            raise DataError(f"split {split!r} is empty")
        self.split = split
        extra = ["n_segments"] if "n_segments" in ds.column_names else []
        table = ds.select_columns([*REQUIRED_COLUMNS, *extra]).with_format("arrow")[:]  # columns, no rows
        ids, id_off = _ints(table, "input_ids")
        qpos, q_off = _ints(table, "query_pos")
        answers, a_off = _ints(table, "answers")
        qtype, t_off = _type_index(table)
        self.lengths = np.diff(id_off)
        bad = np.flatnonzero((np.diff(a_off) != np.diff(q_off)) | (np.diff(t_off) != np.diff(q_off)))
        if bad.size:
            raise DataError(f"split {split!r} doc {bad[0]}: query_pos/answers/query_type lengths differ")
        self.n_segments = (table.column("n_segments").to_numpy().astype(np.int64) if extra
                           else -(-self.lengths // int(window)))
        self._check_queries(table, ids, id_off, qpos, q_off, answers, qtype)
        # one tensor per column; a document's rows are views into it
        self.ids = list(torch.from_numpy(ids.astype(np.int64)).split(self.lengths.tolist()))
        sizes = np.diff(q_off).tolist()
        self.qpos = list(torch.from_numpy(qpos.astype(np.int64)).split(sizes))
        self.answers = list(torch.from_numpy(answers.astype(np.int64)).split(sizes))
        self.qtype = list(torch.from_numpy(qtype.astype(np.int64)).split(sizes))
        self.max_token = int(ids.max())

    def _check_queries(self, table, ids, id_off, qpos, q_off, answers, qtype) -> None:
        """Every query type known, and every answer the token right after its query position."""
        doc = np.repeat(np.arange(len(q_off) - 1), np.diff(q_off))  # document of each query
        if (qtype < 0).any():
            i = int(doc[qtype < 0][0])
            bad = sorted(set(table.column("query_type")[i].as_py()) - set(TYPE_INDEX))
            raise DataError(f"split {self.split!r} doc {i}: unknown query_type {bad}; known: {list(QUERY_TYPES)}")
        inside = (qpos >= 0) & (qpos + 1 < self.lengths[doc])
        nxt = np.where(inside, id_off[doc] + qpos + 1, 0)
        wrong = ~inside | (ids[nxt] != answers)
        if wrong.any():
            raise DataError(f"split {self.split!r} doc {int(doc[wrong][0])}: input_ids[query_pos + 1] != answers")

    def __len__(self) -> int:
        return len(self.ids)

    def type_counts(self) -> dict[str, int]:
        c = torch.bincount(torch.cat(self.qtype), minlength=len(QUERY_TYPES))
        return {name: int(c[i]) for i, name in enumerate(QUERY_TYPES)}

    def __getitem__(self, i: int) -> dict:
        return self.__getitems__([i])

    def __getitems__(self, idx: list[int]) -> dict:
        lengths = {int(self.lengths[i]) for i in idx}
        if len(lengths) != 1:
            raise DataError(f"batch mixes document lengths {sorted(lengths)} (sampler bug)")
        q = max(1, max(len(self.qpos[i]) for i in idx))
        qpos = torch.full((len(idx), q), -1, dtype=torch.long)  # [B, Q], -1 = no query
        answers = torch.full((len(idx), q), -1, dtype=torch.long)
        qtype = torch.full((len(idx), q), -1, dtype=torch.long)
        for r, i in enumerate(idx):
            n = len(self.qpos[i])
            qpos[r, :n], answers[r, :n], qtype[r, :n] = self.qpos[i], self.answers[i], self.qtype[i]
        return {"input_ids": torch.stack([self.ids[i] for i in idx]),  # [B, N]
                "query_pos": qpos, "answers": answers, "query_type": qtype}


class CurriculumBatchSampler(torch.utils.data.Sampler):
    """Endless batches of equal-length documents, drawn from those allowed at the current step.

    The batch for optimizer step s is a pure function of (seed, s): documents are grouped by
    length, a group is chosen with probability proportional to its allowed size (so sampling is
    uniform over allowed documents), then `batch_size` documents from it. Resuming at step s
    therefore continues the exact sequence, and no per-epoch state needs saving.
    `step_source` (set by the DataModule) reports the global step when iteration starts.
    With `max_batch_tokens`, a batch of long documents holds only as many as fit in that many tokens
    (at least one per process): long documents then cost about what a short batch costs.
    With `world_size` processes (DDP), `batch_size` is the global batch: every rank draws the same
    batch and keeps its own contiguous share of it, so the ranks see disjoint parts of exactly the
    batch one process would see (under `max_batch_tokens`, rounded down to a multiple of the process count).
    """

    def __init__(self, lengths: np.ndarray, n_segments: np.ndarray, batch_size: int, curriculum: Any,
                 seed: int, start_step: int = 0, rank: int = 0, world_size: int = 1,
                 max_batch_tokens: Optional[int] = None):
        if int(world_size) < 1 or not 0 <= int(rank) < int(world_size) or int(batch_size) % int(world_size):
            raise ConfigError(f"train.batch_size={batch_size} is the global batch and must split evenly over "
                              f"{world_size} processes (rank {rank})")
        self.batch_size = int(batch_size)
        self.max_batch_tokens = None if max_batch_tokens is None else int(max_batch_tokens)
        self.rank, self.world_size = int(rank), int(world_size)
        self.curriculum = [dict(until_step=cfg_get(s, "until_step"), max_segments=cfg_get(s, "max_segments"))
                           for s in (curriculum or [])]
        self.seed = int(seed)
        self.start_step = int(start_step)
        self.step_source: Optional[Callable[[], int]] = None
        keys = sorted({(int(n), int(ln)) for n, ln in zip(n_segments, lengths)})
        self.groups = [(n, ln, np.flatnonzero((n_segments == n) & (lengths == ln))) for n, ln in keys]
        self.n_segments = np.asarray(n_segments)
        if not self.allowed_groups(0):
            raise ConfigError(
                f"train.curriculum allows at most {curriculum_limit(self.curriculum, 0)} segments at step 0, "
                f"but the shortest training document has {int(self.n_segments.min())}"
            )

    def limit(self, step: int) -> Optional[int]:
        return curriculum_limit(self.curriculum, step)

    def allowed_groups(self, step: int) -> list[tuple[int, np.ndarray]]:
        """(document length in tokens, indices) of every length group the curriculum allows at `step`."""
        lim = self.limit(step)
        return [(ln, idx) for n, ln, idx in self.groups if lim is None or n <= lim]

    def docs_per_batch(self, length: int) -> int:
        """`batch_size`, or fewer where `max_batch_tokens` caps it: a multiple of the process count."""
        if self.max_batch_tokens is None:
            return self.batch_size
        fit = self.max_batch_tokens // int(length) // self.world_size * self.world_size
        return min(self.batch_size, max(self.world_size, fit))

    def batch_at(self, step: int) -> list[int]:
        groups = self.allowed_groups(step)
        if not groups:
            raise ConfigError(f"train.curriculum allows no training document at step {step}")
        rng = np.random.default_rng([self.seed, int(step)])
        sizes = np.array([len(g) for _, g in groups], dtype=np.float64)
        ln, g = groups[int(rng.choice(len(groups), p=sizes / sizes.sum()))]
        n = self.docs_per_batch(ln)
        pick = rng.choice(len(g), size=n, replace=len(g) < n)
        if self.world_size > 1:
            per = n // self.world_size
            pick = pick[self.rank * per:(self.rank + 1) * per]
        return g[pick].tolist()

    def __iter__(self) -> Iterator[list[int]]:
        step = self.step_source() if self.step_source is not None else self.start_step
        while True:
            yield self.batch_at(step)
            step += 1


def eval_batches(lengths: np.ndarray, batch_size: int, seed: int = 0, rank: int = 0,
                 world_size: int = 1) -> list[list[int]]:
    """Validation batches: equal-length groups cut into batches, batch order shuffled with a fixed
    seed so that `limit_val_batches` takes a sample of every length, not just the shortest. With
    `world_size` processes each rank scores every world_size-th batch (the module sums across ranks)."""
    batches = []
    for ln in sorted(set(lengths.tolist())):
        idx = np.flatnonzero(lengths == ln)
        batches += [idx[i:i + batch_size].tolist() for i in range(0, len(idx), batch_size)]
    order = np.random.default_rng(seed).permutation(len(batches))
    return [batches[i] for i in order][rank::world_size]


class MemoryDataModule(L.LightningDataModule):
    """Train split with the curriculum batch sampler; the validation splits (val, and val_long where
    the data have it) in fixed equal-length batches, one dataloader each, in `val_names` order."""

    def __init__(self, data_dir: str | Path, window: int, batch_size: int, val_batch_size: int,
                 curriculum: Any, seed: int, max_batch_tokens: Optional[int] = None):
        super().__init__()
        self.data_dir, self.window = str(data_dir), int(window)
        self.batch_size, self.val_batch_size = int(batch_size), int(val_batch_size)
        self.max_batch_tokens = max_batch_tokens
        self.curriculum, self.seed = curriculum, int(seed)
        self.train_set: Optional[DocumentSet] = None
        self.val_sets: dict[str, DocumentSet] = {}

    @property
    def val_names(self) -> list[str]:
        return list(self.val_sets)

    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_set is not None:
            return
        from pipeline import data as pdata

        self.train_set = DocumentSet(pdata.load_split(self.data_dir, "train"), self.window, "train")
        have = set(pdata.load_manifest(self.data_dir).get("splits", {}))
        for name in VAL_SPLITS:
            if name == "val" or name in have:
                self.val_sets[name] = DocumentSet(pdata.load_split(self.data_dir, name), self.window, name)
        self.make_train_sampler()  # fail now if the curriculum allows no document at step 0

    def _rank(self) -> tuple[int, int]:
        """(global rank, world size) of this process: (0, 1) outside a multi-process trainer."""
        trainer = getattr(self, "trainer", None)
        return (int(trainer.global_rank), int(trainer.world_size)) if trainer is not None else (0, 1)

    def make_train_sampler(self) -> CurriculumBatchSampler:
        rank, world = self._rank()
        s = CurriculumBatchSampler(self.train_set.lengths, self.train_set.n_segments, self.batch_size,
                                   self.curriculum, self.seed, rank=rank, world_size=world,
                                   max_batch_tokens=self.max_batch_tokens)
        trainer = getattr(self, "trainer", None)
        if trainer is not None:
            s.step_source = lambda: int(trainer.global_step)
        return s

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(self.train_set, batch_sampler=self.make_train_sampler(),
                                           collate_fn=_identity, num_workers=0)

    def val_dataloader(self) -> list[torch.utils.data.DataLoader]:
        rank, world = self._rank()
        return [torch.utils.data.DataLoader(ds, batch_sampler=eval_batches(ds.lengths, self.val_batch_size,
                                                                           rank=rank, world_size=world),
                                            collate_fn=_identity, num_workers=0) for ds in self.val_sets.values()]
