"""Skip-gram item2vec with negative sampling (gensim) over session item sequences.

Input: training sessions (ordered ``item_ids``; booked sessions optionally repeated in the
stream). Output: ``ItemVectors`` (ids, L2-normalised float32 matrix, training counts).

Determinism: gensim is seeded, and its vector initialisation uses a stable hash here instead of
Python's salted ``hash``; with ``workers=1`` two runs give identical vectors. With more workers
the thread scheduling changes the result slightly (documented by gensim).

gensim's running loss is cumulative, kept in float32 and racy with several workers: the epoch
log shows per-epoch differences, which are indicative only.
"""

from __future__ import annotations

import logging
import time
import zlib
from collections.abc import Iterable, Iterator, Sequence

import numpy as np

from embedding.core import chaos
from embedding.core.config import Word2VecParams
from embedding.vectors.item_vectors import ItemVectors, normalize_rows

logger = logging.getLogger(__name__)


def stable_hash(text: str) -> int:
    """Process-independent replacement for ``hash`` (PYTHONHASHSEED-proof)."""
    return zlib.crc32(text.encode())


class SessionCorpus:
    """Re-iterable corpus of item sequences; booked sessions are yielded ``oversample`` times.

    gensim iterates the corpus once for the vocabulary and once per epoch, so this must not
    be a one-shot generator.
    """

    def __init__(
        self, sessions: Sequence[list[str]], booked: Sequence[bool], oversample: int = 1
    ) -> None:
        self.sessions = sessions
        self.booked = booked
        self.oversample = oversample

    def __iter__(self) -> Iterator[list[str]]:
        for items, is_booked in zip(self.sessions, self.booked, strict=True):
            for _ in range(self.oversample if is_booked else 1):
                yield items

    def __len__(self) -> int:
        extra = (self.oversample - 1) * sum(bool(b) for b in self.booked)
        return len(self.sessions) + extra


def _epoch_logger(n_words: int, history: list[dict]):
    from gensim.models.callbacks import CallbackAny2Vec

    class EpochLog(CallbackAny2Vec):
        def __init__(self) -> None:
            self.epoch = 0
            self.last_loss = 0.0
            self.started = time.monotonic()

        def on_epoch_begin(self, model) -> None:
            self.started = time.monotonic()

        def on_epoch_end(self, model) -> None:
            loss = model.get_latest_training_loss()
            elapsed = time.monotonic() - self.started
            self.epoch += 1
            words_per_s = n_words / max(elapsed, 1e-9)
            history.append({"epoch": self.epoch, "loss": loss - self.last_loss,
                            "words_per_s": words_per_s})  # fmt: skip
            chaos.point("train.epoch")
            logger.info(
                "word2vec epoch %d/%d: %.0f words/s, loss %.1f (per-epoch difference, indicative)",
                self.epoch,
                model.epochs,
                words_per_s,
                loss - self.last_loss,
            )
            self.last_loss = loss

    return EpochLog()


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB (ru_maxrss is KiB on Linux)."""
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def train_word2vec(
    corpus: Iterable[list[str]],
    params: Word2VecParams,
    seed: int,
    history: list[dict] | None = None,
) -> ItemVectors:
    """Train skip-gram (or CBOW, ``params.sg=0``) with negative sampling on ``corpus``, any
    re-iterable of item lists (``SessionCorpus`` in memory, ``ParquetSessionCorpus`` streamed);
    one ``{"epoch", "loss", "words_per_s"}`` per epoch is appended to ``history`` when given.
    Knobs left at None (``vector_size``, ``sample``, ``epochs``) are derived from the corpus
    (``embedding.train.auto_params``)."""
    from gensim.models import Word2Vec

    from embedding.train.auto_params import resolve_for_corpus

    params, derived = resolve_for_corpus(params, corpus)
    if derived:
        logger.info("word2vec knobs derived from the corpus: %s", derived)
    model = Word2Vec(
        vector_size=params.vector_size,
        window=params.window,
        negative=params.negative,
        ns_exponent=params.ns_exponent,
        sample=params.sample,
        min_count=params.min_count,
        alpha=params.alpha,
        min_alpha=params.min_alpha,
        sg=params.sg,
        hs=0,
        workers=params.workers,
        seed=seed,
        hashfxn=stable_hash,
        compute_loss=True,
    )
    # the vocabulary pass also gives the raw counts: no separate counting pass over the corpus
    model.build_vocab(corpus, keep_raw_vocab=True)
    n_seen, n_words = len(model.raw_vocab), model.corpus_total_words
    raw_counts = model.raw_vocab
    if len(model.wv) == 0:
        from embedding.core.errors import InputError

        raise InputError(
            f"no item occurs word2vec.min_count={params.min_count} times in the "
            f"{model.corpus_count} training sessions; lower min_count or widen the window"
        )
    started = time.monotonic()
    model.train(
        corpus,
        total_examples=model.corpus_count,
        epochs=params.epochs,
        compute_loss=True,
        callbacks=[_epoch_logger(n_words, history if history is not None else [])],
    )
    wv = model.wv
    ids = list(wv.index_to_key)
    counts = np.array([raw_counts[i] for i in ids], dtype=np.int64)
    del model.raw_vocab
    logger.info(
        "word2vec: %d items (of %d seen), dim %d, %d epochs in %.1f s, peak RSS %.0f MiB",
        len(ids),
        n_seen,
        params.vector_size,
        params.epochs,
        time.monotonic() - started,
        peak_rss_mb(),
    )
    return ItemVectors(
        ids=ids, vectors=normalize_rows(np.asarray(wv.vectors, dtype=np.float32)), counts=counts
    )
