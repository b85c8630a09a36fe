"""Synthetic long-context retrieval (issue 19): a model that has something to retrieve.

A sequence is filler (uniform random tokens of a filler sub-vocabulary) with items hidden
in it, and queries at its end:

    item   KEY k1 k2 v1 v2 v3 v4      (multi-key associative recall: up to max_items items)
    item   f KEY PASSKEY v1 v2 v3 v4  (passkey: one item, its key the PASSKEY token; f filler)
    query  QUERY k1 k2 v1 v2 v3 v4    (or f QUERY PASSKEY v1 ...)

The answer of a query is its item's value tokens. Key and value tokens are drawn without
replacement from the symbol sub-vocabulary, so within a sequence every key and value token
is unique: each answer token is what followed the previous token where it appeared
before (an induction head's copy), the first one found through the key's last token.
Every item and query is slot_len = 1 + key_len + value_len tokens. A VALUE marker between
key and value ("KEY k1 k2 VALUE v1 ...") would make the first answer token a match of two
tokens back, which a small model learns far more slowly: in a CPU test (1.2 M parameters,
64-token contexts, 3 items, 2000 steps) that form stalled at 0.35 answer accuracy, and this
one reached 0.69, still rising.

Training sequences end with up to max_queries queries of distinct items (the loss sits on
their value tokens); an evaluation prompt ends with one query's "... QUERY k1 k2", and its
answer, value_len tokens, completes the sequence to exactly the context length. Everything
is a function of (seed, step) or of (seed, context length, number of samples), through
numpy's SeedSequence: no global state."""
import dataclasses

import numpy as np

PAD, BOS, KEY, QUERY, PASSKEY = 0, 1, 2, 4, 5
FILLER_START = 16  # tokens 3 and 6-15 are reserved
NAMES = {PAD: "PAD", BOS: "BOS", KEY: "KEY", QUERY: "QUERY", PASSKEY: "PASSKEY"}


@dataclasses.dataclass(frozen=True)
class Task:
    """The vocabulary and the item shapes. Tokens: 0-15 markers, then filler_vocab filler
    tokens, then the symbols (keys and values) up to vocab_size."""
    vocab_size: int = 512
    filler_vocab: int = 240
    key_len: int = 2
    value_len: int = 4
    max_items: int = 16
    max_queries: int = 8
    passkey_share: float = 0.25  # of training sequences

    def __post_init__(self):
        if self.key_len < 1 or self.value_len < 1 or self.max_items < 1 or not 1 <= self.max_queries <= self.max_items:
            raise ValueError(f"{self}: key_len, value_len, max_items >= 1 and 1 <= max_queries <= max_items")
        if self.symbols < self.max_items * (self.key_len + self.value_len):
            raise ValueError(f"{self}: {self.symbols} symbols cannot give {self.max_items} items unique keys and "
                             "values")

    @property
    def symbol_start(self):
        return FILLER_START + self.filler_vocab

    @property
    def symbols(self):
        return self.vocab_size - self.symbol_start

    @property
    def slot_len(self):
        return 1 + self.key_len + self.value_len

    def min_length(self, queries=None):
        """The shortest sequence that holds max_items items and `queries` queries."""
        return 1 + (self.max_items + (self.max_queries if queries is None else queries)) * self.slot_len

    def to_dict(self):
        return dataclasses.asdict(self)

    def _sequences(self, rng, length, n_items, n_queries, passkey, depth=None):
        """Builds len(n_items) sequences of `length` tokens. n_items, n_queries int [batch],
        passkey bool [batch]; depth float [batch] or None: where item 0 sits, as a share
        of the room the items leave (0: first, 1: last). Query j asks for item j.
        Returns tokens int64 [batch][length], answer positions int64 [batch][max_queries *
        value_len] (the positions of the queries' value tokens) and their mask bool (same
        shape), and item 0's first position int64 [batch]."""
        batch, items, s, kl, vl = len(n_items), self.max_items, self.slot_len, self.key_len, self.value_len
        if length < self.min_length():
            raise ValueError(f"length={length} too short for {self}; supported: {self.min_length()} or more")
        tokens = rng.integers(FILLER_START, self.symbol_start, (batch, length), dtype=np.int64)
        tokens[:, 0] = BOS
        # unique symbols per sequence: the first items * (key_len + value_len) of a permutation
        drawn = np.argsort(rng.random((batch, self.symbols)), axis=1)[:, :items * (kl + vl)] + self.symbol_start
        keys = drawn[:, :items * kl].reshape(batch, items, kl)
        values = drawn[:, items * kl:].reshape(batch, items, vl)
        slot = np.empty((batch, items, s), np.int64)  # one item as it is written
        slot[:, :, 0] = KEY
        slot[:, :, 1:1 + kl] = keys
        slot[:, :, 1 + kl:] = values
        pk = np.flatnonzero(passkey)  # [filler, KEY, PASSKEY, values]: the same slot length
        slot[pk, :, :kl + 1] = np.concatenate([tokens[pk, 1:kl], np.full((len(pk), 2), [KEY, PASSKEY])],
                                              axis=1)[:, None, :]
        # items lie in the body between BOS and the queries; each sequence's free room
        # (body minus its items) is split at uniform offsets, one per item
        body = length - 1 - n_queries * s
        free = body - n_items * s
        offsets = np.floor(rng.random((batch, items)) * (free + 1)[:, None]).astype(np.int64)
        if depth is not None:
            offsets[:, 0] = np.round(np.asarray(depth) * free).astype(np.int64)
        present = np.arange(items)[None, :] < n_items[:, None]
        offsets = np.where(present, offsets, np.iinfo(np.int64).max)  # absent items sort last
        rank = np.argsort(np.argsort(offsets, axis=1, kind="stable"), axis=1, kind="stable")
        starts = 1 + offsets + rank * s
        rows = np.broadcast_to(np.arange(batch)[:, None, None], (batch, items, s))
        where = np.where(present[:, :, None], starts[:, :, None], 0) + np.arange(s)
        tokens[rows[present], where[present]] = slot[present]
        # queries: slot j of the tail asks for item j (its KEY marker becomes QUERY)
        query = slot[:, :self.max_queries].copy()
        query[query == KEY] = QUERY
        first = length - n_queries * s  # [batch]: the first query's position
        q_rows = np.broadcast_to(np.arange(batch)[:, None, None], query.shape)
        q_where = first[:, None, None] + np.arange(self.max_queries)[None, :, None] * s + np.arange(s)
        asked = np.arange(self.max_queries)[None, :] < n_queries[:, None]
        tokens[q_rows[asked], q_where[asked]] = query[asked]
        answer = q_where[:, :, s - vl:].reshape(batch, -1)
        mask = np.repeat(asked, vl, axis=1)
        return tokens, np.where(mask, answer, 0), mask, starts[:, 0]

    def training_batch(self, seed, step, batch, length):
        """Sequences for training step `step`: tokens int64 [batch][length], answer
        positions int64 [batch][max_queries * value_len] and their mask bool. A passkey
        sequence (passkey_share of them) has one item and one query; the others have 1 to
        max_items items and min(items, max_queries) queries."""
        rng = np.random.default_rng([seed, step])
        passkey = rng.random(batch) < self.passkey_share
        n_items = np.where(passkey, 1, rng.integers(1, self.max_items + 1, batch))
        n_queries = np.minimum(n_items, self.max_queries)
        tokens, answer, mask, _ = self._sequences(rng, length, n_items, n_queries, passkey)
        return tokens, answer, mask

    def eval_samples(self, seed, length, n):
        """n evaluation samples of `length` tokens: dicts with prompt int64 [length -
        value_len] (ending QUERY and the key), answer int64 [value_len], kind ("multikey":
        max_items items, or "passkey", alternating), depth (the queried item's depth
        share, (i + 0.5) / n for sample i, so depths sweep the context) and needle (its
        first token's position)."""
        rng = np.random.default_rng([seed, length, n])
        index = np.arange(n)
        passkey = index % 2 == 1
        n_items = np.where(passkey, 1, self.max_items)
        depth = (index + 0.5) / n
        tokens, answer, _, needle = self._sequences(rng, length, n_items, np.ones(n, np.int64), passkey, depth)
        cut = length - self.value_len
        assert np.array_equal(answer[:, :self.value_len], np.broadcast_to(np.arange(cut, length), (n, self.value_len)))
        return [{"prompt": tokens[i, :cut], "answer": tokens[i, cut:], "kind": "passkey" if passkey[i] else "multikey",
                 "depth": float(depth[i]), "needle": int(needle[i])} for i in range(n)]


def describe(task, tokens, limit=40):
    """A readable form of a token sequence: markers by name, filler as '.', symbols as sN."""
    out = []
    for t in np.asarray(tokens)[:limit].tolist():
        out.append(NAMES.get(t) or ("." if t < task.symbol_start else f"s{t - task.symbol_start}"))
    return " ".join(out) + (" ..." if len(tokens) > limit else "")


if __name__ == "__main__":
    task = Task()
    tokens, answer, mask = task.training_batch(0, 0, 2, task.min_length())
    for b in range(2):
        print(describe(task, tokens[b], 400))
        print("answers:", describe(task, tokens[b, answer[b][mask[b]]], 64))
    for s in task.eval_samples(0, 512, 2):
        print(s["kind"], s["depth"], s["needle"], describe(task, s["prompt"][s["needle"]:], 12), "... ->",
              describe(task, s["prompt"][-task.slot_len:]), "=>", describe(task, s["answer"]))
