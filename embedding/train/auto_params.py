"""Skip-gram knobs whose right value depends on the corpus size, derived from the data.

Input: the configured ``Word2VecParams`` (``vector_size``, ``sample`` or ``epochs`` left at None)
and the training corpus' size (tokens in one pass, distinct items). Output: the same params with
every unset knob filled in, and a record of what was derived and why (manifest, report).

The rules keep what a knob means to the items constant across corpus sizes:

- ``sample``: word2vec down-samples an item seen more often than ``sample x tokens`` times, so a
  fixed share means "seen 6 times" on a 200k-token corpus and "seen 0.3 times" (every item) on a
  10k one. The threshold is held at ``SAMPLE_COUNT`` occurrences instead: ``sample = SAMPLE_COUNT
  / tokens``, within [1e-4, 1e-3]. The floor is from the real logs: skip-gram next-item HR@10 on
  the globo input (550k tokens) 0.019 at 1e-5, 0.067 at 1e-4, 0.045 at 1e-3; yoochoose (55k)
  0.325 at 1e-4, 0.285 at 1e-3 (ns_exponent 0.75, the pipeline's own test split).
- ``epochs``: rare items need many passes, and a pass over a small corpus is cheap: a budget of
  ``TOKEN_BUDGET`` token passes, within [``MIN_EPOCHS``, ``MAX_EPOCHS``] (the generator's tuned 50
  and trivago's 100 at their sizes; a 1M-event log gets the minimum, which keeps the daily run
  short).
- ``vector_size``: 32 up to 20k items, 64 up to 200k, 128 beyond (no log we have gained from
  more than 32-64 at its size; the cap keeps serving cheap).
"""

from __future__ import annotations

from embedding.core.config import Word2VecParams

SAMPLE_COUNT = 5.0
SAMPLE_RANGE = (1e-4, 1e-3)
TOKEN_BUDGET = 8_000_000
MIN_EPOCHS, MAX_EPOCHS = 10, 100
DIM_STEPS = ((20_000, 32), (200_000, 64))
MAX_DIM = 128


def derived_sample(n_tokens: int) -> float:
    low, high = SAMPLE_RANGE
    return float(min(high, max(low, SAMPLE_COUNT / max(n_tokens, 1))))


def derived_epochs(n_tokens: int) -> int:
    return int(min(MAX_EPOCHS, max(MIN_EPOCHS, round(TOKEN_BUDGET / max(n_tokens, 1)))))


def derived_dim(n_items: int) -> int:
    return next((dim for limit, dim in DIM_STEPS if n_items <= limit), MAX_DIM)


def resolve(params: Word2VecParams, n_tokens: int, n_items: int) -> tuple[Word2VecParams, dict]:
    """``params`` with unset knobs derived from the corpus, and the record of it."""
    derived = {}
    if params.sample is None:
        derived["sample"] = derived_sample(n_tokens)
    if params.epochs is None:
        derived["epochs"] = derived_epochs(n_tokens)
    if params.vector_size is None:
        derived["vector_size"] = derived_dim(n_items)
    resolved = params.model_copy(update=derived)
    record = {
        "n_tokens": n_tokens,
        "n_items": n_items,
        "derived": sorted(derived),
        "vector_size": resolved.vector_size,
        "sample": resolved.sample,
        "epochs": resolved.epochs,
        "rules": f"sample = {SAMPLE_COUNT:g} / tokens in {list(SAMPLE_RANGE)}; epochs = "
        f"{TOKEN_BUDGET:,} / tokens in [{MIN_EPOCHS}, {MAX_EPOCHS}]; vector_size by items "
        f"{DIM_STEPS}, else {MAX_DIM}",
    }
    return resolved, record


def corpus_shape(corpus) -> tuple[int, int]:
    """(tokens in one pass, distinct items) of any re-iterable corpus of item lists."""
    if hasattr(corpus, "shape"):
        return corpus.shape()
    n_tokens, items = 0, set()
    for session in corpus:
        n_tokens += len(session)
        items.update(session)
    return n_tokens, len(items)


def resolve_for_corpus(params: Word2VecParams, corpus) -> tuple[Word2VecParams, dict | None]:
    """``resolve`` on the corpus' size; (params, None) when every knob is set."""
    if None not in (params.sample, params.epochs, params.vector_size):
        return params, None
    return resolve(params, *corpus_shape(corpus))
