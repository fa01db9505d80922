"""Documents with planted facts: layouts of training documents (whole segments, far facts plus
local pairs in every segment) and evaluation documents (facts spread, queries at the end).

A layout is a list of pieces: an int (that many filler tokens), a list of raw token ids (a
speaker tag), or a Block (a fact or a query). Recall values are written as negative slot
placeholders (-1 - slot) and filled in per split afterwards, so the rare-token plan can see
every fact slot of the training split before choosing where rare values go.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.data.vocab import PLACEHOLDER, Vocab
from pipeline.config.checks import check_data_fields
from pipeline.config.schema import DataConfig
from pipeline.errors import ConfigError


@dataclass
class Template:
    """A template as token ids, with the offset of each placeholder letter."""

    ids: list[int]
    slots: dict[str, int]

    def render(self, **fill: int) -> list[int]:
        out = list(self.ids)
        for k, v in fill.items():
            out[self.slots[k]] = v
        return out

    def __len__(self) -> int:
        return len(self.ids)


def parse_template(text: str, key: str, need: tuple[str, ...], vocab: Vocab) -> Template:
    ids, slots = [], {}
    for i, w in enumerate(text.split()):
        m = PLACEHOLDER.match(w)
        if m:
            letter = m.group(1)
            if letter not in need or letter in slots:
                raise ConfigError(f"data.{key}: placeholder {w} not allowed here or repeated; "
                                  f"'{text}' needs exactly {', '.join('{' + n + '}' for n in need)}")
            slots[letter] = i
            ids.append(-1)
        else:
            ids.append(vocab.id(w))
    if set(slots) != set(need):
        raise ConfigError(f"data.{key}: '{text}' must contain each of {', '.join('{' + n + '}' for n in need)} once")
    return Template(ids, slots)


class Templates:
    def __init__(self, cfg: DataConfig, vocab: Vocab):
        self.fact = parse_template(cfg.fact_template, "fact_template", ("E", "V"), vocab)
        self.query = parse_template(cfg.query_template, "query_template", ("E",), vocab)
        self.num_fact = parse_template(cfg.num_fact_template, "num_fact_template", ("X", "N"), vocab)
        self.num_query = parse_template(cfg.num_query_template, "num_query_template", ("X", "Y"), vocab)


@dataclass
class Block:
    """A fact (value at `off`) or a query (prompt ends at `off`, answer follows)."""

    tokens: list[int]
    off: int
    fact_id: int = -1  # facts
    refs: tuple[int, ...] = ()  # queries: fact ids the answer depends on
    qtype: str = ""  # queries: "recall" (far/local by position), "numeric", "dialogue"

    @property
    def is_query(self) -> bool:
        return bool(self.refs)


class DocBuilder:
    """Renders facts and queries for one split; hands out fact ids and value slots."""

    def __init__(self, cfg: DataConfig, vocab: Vocab):
        self.cfg, self.vocab, self.t = cfg, vocab, Templates(cfg, vocab)
        self.n_slots = 0
        self.L_fact, self.L_query = len(self.t.fact), len(self.t.query) + 1
        self.L_nfact, self.L_nquery = len(self.t.num_fact), len(self.t.num_query) + 1
        self.L_pair = self.L_fact + self.L_query
        self.L_triple = 2 * self.L_nfact + self.L_nquery
        # Plain lists: layouts draw with random.Random (fast for the many tiny draws per document).
        self.entities = vocab.entity_ids.tolist()
        self.variables = vocab.variable_ids.tolist()
        self.numbers = vocab.number_ids.tolist()
        self.speakers = vocab.speaker_ids.tolist()
        self.common = vocab.common_value_ids.tolist()

    def new_slot(self) -> int:
        self.n_slots += 1
        return -self.n_slots  # placeholder -1 - slot

    def recall(self, entity: int, fid: int, qtype: str = "recall") -> tuple[Block, Block]:
        """A fact and its query sharing one value slot (the value occurs twice: stated, answered)."""
        v = self.new_slot()
        f = Block(self.t.fact.render(E=entity, V=v), self.t.fact.slots["V"], fact_id=fid)
        q = Block(self.t.query.render(E=entity) + [v], len(self.t.query) - 1, refs=(fid,), qtype=qtype)
        return f, q

    def distractor(self, r: random.Random, entity: int, fid: int) -> Block:
        """A fact that is never asked: a common value drawn here (not a value slot, so the rare-token
        plan, which counts every slot twice, never puts a rare value in it)."""
        v = self.common[r.randrange(len(self.common))]
        return Block(self.t.fact.render(E=entity, V=v), self.t.fact.slots["V"], fact_id=fid)

    def numeric(self, r: random.Random, x: int, y: int, fid: int) -> tuple[Block, Block, Block]:
        """Two var facts and the query of their sum; a + b <= max_number."""
        nums = self.numbers
        a = r.randint(0, self.cfg.max_number)
        b = r.randint(0, self.cfg.max_number - a)
        fx = Block(self.t.num_fact.render(X=x, N=nums[a]), self.t.num_fact.slots["N"], fact_id=fid)
        fy = Block(self.t.num_fact.render(X=y, N=nums[b]), self.t.num_fact.slots["N"], fact_id=fid + 1)
        q = Block(self.t.num_query.render(X=x, Y=y) + [int(nums[a + b])], len(self.t.num_query) - 1,
                  refs=(fid, fid + 1), qtype="numeric")
        return fx, fy, q


def _composition(r: random.Random, total: int, parts: int) -> list[int]:
    """A random split of `total` filler tokens into `parts` gaps (each >= 0)."""
    rand, span = r.random, total + 1
    cuts = [0] + sorted(int(rand() * span) for _ in range(parts - 1)) + [total]
    return [cuts[i + 1] - cuts[i] for i in range(parts)]


def _order(r: random.Random, blocks: list[Block]) -> list[Block]:
    """Random order in which every query comes after the facts it depends on."""
    order = list(blocks)
    r.shuffle(order)
    here = {b.fact_id for b in blocks if not b.is_query}
    placed: set[int] = set()
    out: list[Block] = []
    pending: list[Block] = []
    for b in order:
        if b.is_query and not (set(b.refs) & here) <= placed:
            pending.append(b)
            continue
        out.append(b)
        if not b.is_query:
            placed.add(b.fact_id)
        for p in list(pending):
            if (set(p.refs) & here) <= placed:
                out.append(p)
                pending.remove(p)
    if pending:
        raise RuntimeError("query without its fact in the same region")  # a bug, not a config issue
    return out


def _region(r: random.Random, length: int, blocks: list[Block], prefix: list[int] | None = None) -> list:
    """Pieces filling exactly `length` tokens: optional prefix, then the blocks in random order (every
    query after its facts) with random filler gaps."""
    free = length - sum(len(b.tokens) for b in blocks) - len(prefix or [])
    if free < 0:
        raise ValueError(free)
    blocks = _order(r, blocks)
    gaps = _composition(r, free, len(blocks) + 1)
    pieces: list = [prefix] if prefix else []
    for g, b in zip(gaps, blocks):
        pieces += [g, b]
    pieces.append(gaps[-1])
    return pieces


# ---------------------------------------------------------------- training documents


@dataclass
class _TrainLayout:
    """One training document being laid out: the room left in each segment (after its local pairs' reserve is
    kept free), the blocks placed in each, the entities drawn for it, and the running counts."""

    r: random.Random
    b: "DocBuilder"
    cap: list[int]
    segs: list[list[Block]]
    ents: list[int]
    reserve: int
    n_ent: int = 0
    fid: int = 0
    n_facts: int = 0

    def next_entity(self) -> int:
        self.n_ent += 1
        return int(self.ents[self.n_ent - 1])

    def room(self, L: int) -> list[int]:
        """The early segments with room for L more tokens besides their reserve."""
        return [s for s in range(len(self.cap) - 1) if self.cap[s] - L >= self.reserve]

    def put(self, s: int, block: Block, L: int) -> None:
        self.segs[s].append(block)
        self.cap[s] -= L


def layout_train(r: random.Random, b: DocBuilder, kind: str, n_seg: int) -> tuple[list, int]:
    """Pieces of one training doc of n_seg * segment_len tokens, and its number of facts.

    Far facts (or numeric var pairs) sit in early segments and are asked in the last one: as many as
    fit, up to data.n_far_facts. Recall documents also state up to data.n_distractor_facts facts in
    early segments that are never asked (as many as fit), so that "stated but not yet asked" does not
    single out the far facts: the read must match the query's entity, as in evaluation documents.
    Every early segment also holds `local_pairs_per_segment` local pairs (numeric docs prefer a local
    sum triple when it fits); the last segment holds them too where the far queries leave room. No
    block crosses a segment boundary.
    """
    cfg = b.cfg
    W = cfg.segment_len
    prefixes: list[list[int] | None] = [None] * n_seg
    if kind == "dialogue":
        first = r.randrange(len(b.speakers))
        prefixes = [[b.speakers[(first + s) % len(b.speakers)]] for s in range(n_seg)]
    cap = [W - (len(p) if p else 0) for p in prefixes]
    reserve = cfg.local_pairs_per_segment * b.L_pair
    ents = r.sample(b.entities, min(len(b.entities), cfg.n_far_facts + cfg.n_distractor_facts
                                    + cfg.local_pairs_per_segment * n_seg))
    lay = _TrainLayout(r, b, cap, [[] for _ in range(n_seg)], ents, reserve)
    far_facts, far_queries, spare_vars = _far_blocks(lay, kind)
    if cfg.n_far_facts > 0 and not far_queries:
        early_room = sum(max(0, c - reserve) for c in cap[:-1])
        raise ConfigError(
            f"{kind} training doc of {n_seg} segments: no far fact fits (data.segment_len={W}, "
            f"data.local_pairs_per_segment={cfg.local_pairs_per_segment}, {early_room} free tokens in the early "
            f"segments); raise segment_len or train_min_segments, or lower local_pairs_per_segment")
    cap[-1] -= sum(len(q.tokens) for q in far_queries)
    for f in far_facts:
        lay.put(r.choice(lay.room(len(f.tokens))), f, len(f.tokens))  # the counts in _far_blocks guarantee room
    lay.n_facts = len(far_facts)
    if kind == "recall":  # facts never asked: a far query must find its own entity among them
        for _ in range(cfg.n_distractor_facts):
            cand = lay.room(b.L_fact)
            if not cand or lay.n_ent >= len(ents):
                break
            s = r.choice(cand)
            lay.put(s, b.distractor(r, lay.next_entity(), lay.fid), b.L_fact)
            lay.fid += 1
            lay.n_facts += 1
    for s in range(n_seg):
        if not _local_blocks(lay, kind, s, spare_vars):
            break  # the far queries took the last segment
    lay.segs[-1] += far_queries  # mixed in random order with the last segment's own blocks
    pieces: list = []
    for s in range(n_seg):
        pieces += _region(r, W, lay.segs[s], prefixes[s])
    return pieces, lay.n_facts


def _far_blocks(lay: _TrainLayout, kind: str) -> tuple[list[Block], list[Block], list[int]]:
    """The far facts and their queries (as many as the early segments and the last one hold, up to
    data.n_far_facts; numeric documents: pairs of variables asked as a sum), and the variables left unused."""
    cfg, b, cap = lay.b.cfg, lay.b, lay.cap
    far_facts: list[Block] = []
    far_queries: list[Block] = []
    spare_vars: list[int] = []
    if kind == "numeric":
        want = max(1, cfg.n_far_facts // 2) if cfg.n_far_facts > 0 else 0
        per_seg = [max(0, c - lay.reserve) // b.L_nfact for c in cap[:-1]]  # var facts each early segment holds
        n_pairs = min(want, cap[-1] // b.L_nquery, sum(per_seg) // 2)
        vars_ = lay.r.sample(b.variables, len(b.variables))
        for p in range(n_pairs):
            fx, fy, q = b.numeric(lay.r, vars_[2 * p], vars_[2 * p + 1], lay.fid)
            lay.fid += 2
            far_facts += [fx, fy]
            far_queries.append(q)
        spare_vars = list(vars_[2 * n_pairs:])
    else:
        per_seg = [max(0, c - lay.reserve) // b.L_fact for c in cap[:-1]]
        n_far = min(cfg.n_far_facts, cap[-1] // b.L_query, sum(per_seg))
        for _ in range(n_far):
            f, q = b.recall(lay.next_entity(), lay.fid)
            lay.fid += 1
            far_facts.append(f)
            far_queries.append(q)
    return far_facts, far_queries, spare_vars


def _local_blocks(lay: _TrainLayout, kind: str, s: int, spare_vars: list[int]) -> bool:
    """Segment s's local pairs (a numeric document's local sum triple where one fits); False when the last
    segment has no room left for them (the far queries took it)."""
    cfg, b = lay.b.cfg, lay.b
    for _ in range(cfg.local_pairs_per_segment):
        if kind == "numeric" and lay.cap[s] >= b.L_triple and len(spare_vars) >= 2:
            x, y = int(spare_vars.pop()), int(spare_vars.pop())
            blocks = b.numeric(lay.r, x, y, lay.fid)
            lay.fid += 2
            lay.n_facts += 2
        elif lay.cap[s] >= b.L_pair and lay.n_ent < len(lay.ents):
            blocks = b.recall(lay.next_entity(), lay.fid)
            lay.fid += 1
            lay.n_facts += 1
        elif s == len(lay.cap) - 1:
            return False
        else:
            raise ConfigError(
                f"{kind} training doc: segment {s} has no room for a local pair "
                f"(data.local_pairs_per_segment={cfg.local_pairs_per_segment}, data.segment_len={cfg.segment_len}); "
                "lower it or raise segment_len")
        lay.segs[s] += list(blocks)
        lay.cap[s] -= sum(len(x.tokens) for x in blocks)
    return True


# ---------------------------------------------------------------- evaluation documents


def _aligned(r: random.Random, W: int, length: int, facts: list[Block], *, offset: int = 0,
             prefix: list[int] | None = None, tail: list[Block] | None = None, stratified: bool = True) -> list:
    """Pieces filling `length` tokens that start at document position `offset`: `prefix` first, the
    `tail` blocks back to back at the very end, and each fact inside one W-token segment of the
    document (with random filler around it). No fact straddles a segment boundary, as in training
    documents: a memory that reads segment by segment sees every fact whole (a value whose entity
    sat in the previous segment could not be bound to it by any segment-local computation).
    stratified: facts go to segments spread evenly over the region (else uniformly at random)."""
    tail = list(tail or [])
    start, end = offset + len(prefix or []), offset + length - sum(len(b.tokens) for b in tail)
    segs = [(max(k * W, start), min((k + 1) * W, end)) for k in range(offset // W, -(-(offset + length) // W))]
    segs = [(lo, hi) for lo, hi in segs if hi > lo]
    cap = [hi - lo for lo, hi in segs]
    placed: list[list[Block]] = [[] for _ in segs]
    order = list(facts)
    r.shuffle(order)
    for i, f in enumerate(order):
        want = int((i + r.random()) * len(segs) / len(order)) if stratified else r.randrange(max(1, len(segs)))
        fits = [k for k in sorted(range(len(segs)), key=lambda k: abs(k - want)) if cap[k] >= len(f.tokens)]
        if not fits:
            raise ConfigError(f"a document region of {length} tokens cannot hold {len(facts)} facts inside "
                              f"segments of data.segment_len={W} besides {len(tail)} queries; raise the length "
                              "or lower data.n_eval_facts / data.n_eval_num_vars / data.n_dialogue_facts")
        placed[fits[0]].append(f)
        cap[fits[0]] -= len(f.tokens)
    pieces: list = [prefix] if prefix else []
    for (lo, hi), blocks in zip(segs, placed):
        pieces += _region(r, hi - lo, blocks)
    return pieces + tail


def _first_segment(r: random.Random, W: int, length: int, facts: list[Block], queries: list[Block]) -> list:
    """Every fact in the first segment (random order and gaps), filler, then the queries back to back
    at the end: each query is the whole document away from its fact (the sanity regime)."""
    q_len = sum(len(q.tokens) for q in queries)
    if sum(len(f.tokens) for f in facts) > W or length < W + q_len:
        raise ConfigError(f"data.eval_facts=first_segment: {len(facts)} facts must fit one segment "
                          f"(data.segment_len={W}) and a {length}-token doc must hold it plus {q_len} query tokens; "
                          "lower data.n_eval_facts or raise the lengths")
    queries = list(queries)
    r.shuffle(queries)
    return _region(r, W, facts) + [length - W - q_len] + queries


def _spread(r: random.Random, W: int, length: int, facts: list[Block], queries: list[Block]) -> list:
    """Facts in segments spread evenly over the document, queries back to back (random order) at the end."""
    queries = list(queries)
    r.shuffle(queries)
    return _aligned(r, W, length, facts, tail=queries)


def layout_recall(r: random.Random, b: DocBuilder, length: int) -> tuple[list, int]:
    ents = r.sample(b.entities, b.cfg.n_eval_facts)
    pairs = [b.recall(e, i) for i, e in enumerate(ents)]
    facts, queries = [p[0] for p in pairs], [p[1] for p in pairs]
    if b.cfg.eval_facts == "first_segment":
        return _first_segment(r, b.cfg.segment_len, length, facts, queries), len(pairs)
    return _spread(r, b.cfg.segment_len, length, facts, queries), len(pairs)


def layout_numeric(r: random.Random, b: DocBuilder, length: int) -> tuple[list, int]:
    nv = b.cfg.n_eval_num_vars
    vars_ = r.sample(b.variables, nv)
    facts, queries = [], []
    for p in range(nv // 2):
        fx, fy, q = b.numeric(r, vars_[2 * p], vars_[2 * p + 1], 2 * p)
        facts += [fx, fy]
        queries.append(q)
    return _spread(r, b.cfg.segment_len, length, facts, queries), len(facts)


def layout_dialogue(r: random.Random, b: DocBuilder, turns: int) -> tuple[list, int]:
    """`turns` turns of dialogue_turn_len tokens: facts in random early turns, asked in the last turn."""
    cfg = b.cfg
    L = cfg.dialogue_turn_len
    first = r.randrange(len(b.speakers))
    ents = r.sample(b.entities, cfg.n_dialogue_facts)
    pairs = [b.recall(e, i, qtype="dialogue") for i, e in enumerate(ents)]
    cap = [L - 1] * turns
    cap[-1] -= sum(len(q.tokens) for _, q in pairs)
    if cap[-1] < 0:
        raise ConfigError(f"data.dialogue_turn_len={L}: the last turn cannot hold {len(pairs)} queries "
                          f"(data.n_dialogue_facts); raise the turn length")
    per_turn: list[list[Block]] = [[] for _ in range(turns)]
    for f, _ in pairs:
        cand = [t for t in range(turns - 1) if cap[t] >= len(f.tokens)]
        if not cand:
            raise ConfigError(f"data.dialogue_turn_len={L}: early turns cannot hold data.n_dialogue_facts="
                              f"{cfg.n_dialogue_facts} facts with {turns} turns")
        t = r.choice(cand)
        per_turn[t].append(f)
        cap[t] -= len(f.tokens)
    pieces: list = []
    for t in range(turns):
        tag = [b.speakers[(first + t) % len(b.speakers)]]
        last = r.sample([q for _, q in pairs], len(pairs)) if t == turns - 1 else None  # random order
        pieces += _aligned(r, cfg.segment_len, L, per_turn[t], offset=t * L, prefix=tag, tail=last,
                           stratified=False)
    return pieces, len(pairs)


# ---------------------------------------------------------------- pieces -> token ids


def assemble(pieces: list, filler: np.ndarray, W: int, length: int, dialogue: bool = False) -> dict:
    """Token ids (placeholders still negative) and per-query records of one document."""
    ids = np.empty(length, dtype=np.int64)
    pos = 0
    fpos = 0
    fact_at: dict[int, int] = {}
    queries: list[tuple[int, int, tuple[int, ...], str]] = []
    for p in pieces:
        if isinstance(p, int):
            ids[pos:pos + p] = filler[fpos:fpos + p]
            pos += p
            fpos += p
        elif isinstance(p, Block):
            n = len(p.tokens)
            ids[pos:pos + n] = p.tokens
            if p.is_query:
                queries.append((pos + p.off, p.tokens[-1], p.refs, p.qtype))
            else:
                fact_at[p.fact_id] = pos + p.off
            pos += n
        else:
            ids[pos:pos + len(p)] = p
            pos += len(p)
    if pos != length:
        raise RuntimeError(f"assembled {pos} tokens, expected {length}")  # a bug
    qpos, ans, fp, qt = [], [], [], []
    for q, a, refs, kind in queries:
        f = min(fact_at[r] for r in refs)
        qpos.append(q)
        ans.append(a)
        fp.append(f)
        if kind == "recall":
            kind = "far" if f // W < q // W else "local"
        qt.append(kind)
    return {"ids": ids, "query_pos": qpos, "answers": ans, "fact_pos": fp, "query_type": qt}


def filler_need(pieces: list) -> int:
    return sum(p for p in pieces if isinstance(p, int))


# ---------------------------------------------------------------- dry-run checks


def _fake_vocab(cfg: DataConfig) -> Vocab:
    from pipeline.data.vocab import build_vocab

    return build_vocab(cfg, filler_words=["x"])


def train_kinds(cfg: DataConfig) -> tuple[list[str], np.ndarray]:
    kinds = [k for k in ("recall", "numeric", "dialogue") if float(cfg.train_mix.get(k, 0.0)) > 0]
    p = np.array([float(cfg.train_mix[k]) for k in kinds])
    return kinds, p / p.sum()


def rare_slots_needed(cfg: DataConfig) -> int:
    """Fact slots the rare plan takes: each slot holds 2 occurrences (the fact and its answer)."""
    return sum(int(c) // 2 for c in cfg.rare_counts) * cfg.rare_tokens_per_class


def check_data(data_cfg: Any, full_cfg: Any = None) -> DataConfig:
    """The fields (pipeline.config.checks.check_data_fields), then a dry run of the document layouts (templates
    well formed, planted facts fit a segment, rare counts fit the training split); returns the DataConfig."""
    c = check_data_fields(data_cfg, full_cfg)
    check_layouts(c)
    return c


def check_layouts(cfg: DataConfig) -> None:
    """Dry-run every layout at its tightest size so bad sizes fail before generation starts."""
    vocab = _fake_vocab(cfg)
    r = random.Random(0)
    kinds, p = train_kinds(cfg)
    est_slots = 0.0
    for k, pk in zip(kinds, p):
        for n_seg in (cfg.train_min_segments, cfg.train_max_segments):
            b = DocBuilder(cfg, vocab)
            layout_train(r, b, k, n_seg)
            if n_seg == cfg.train_min_segments:
                est_slots += pk * b.n_slots
        if cfg.n_train_long_docs:
            layout_train(r, DocBuilder(cfg, vocab), k, cfg.train_long_segments)
    need = rare_slots_needed(cfg)
    est = est_slots * cfg.n_train_docs
    if need > cfg.max_rare_fraction * est:
        raise ConfigError(
            f"data.rare_counts={list(cfg.rare_counts)} x data.rare_tokens_per_class={cfg.rare_tokens_per_class} "
            f"need {need} fact slots, but data.n_train_docs={cfg.n_train_docs} give about {int(est)} "
            f"(at most data.max_rare_fraction={cfg.max_rare_fraction} of them may be rare); "
            "raise n_train_docs or lower rare_counts / rare_tokens_per_class"
        )
    b = DocBuilder(cfg, vocab)
    for n in list(cfg.eval_lengths) + [cfg.rare_eval_length] + list(cfg.val_long_lengths):
        layout_recall(r, b, int(n))
    for n in cfg.eval_lengths:
        layout_numeric(r, b, int(n))
    for t in cfg.dialogue_turns:
        layout_dialogue(r, b, int(t))
