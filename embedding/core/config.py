"""One typed, frozen configuration for every stage, loaded from ``conf/*.yaml``.

``load_config(path, overrides=["word2vec.negative=15"])`` reads the YAML file, applies
``--set key=value`` overrides (values parsed as YAML scalars, then type-checked), and returns a
``Config``. Unknown keys and wrong types fail at load with a ``ConfigError`` naming the key.
Relative paths under ``paths`` are resolved against the project root, so the DAG and the CLI
agree wherever they are started from.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from embedding import PROJECT_ROOT
from embedding.core.errors import ConfigError

EVENT_KINDS = ("view", "click", "book")


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ColumnMap(_Frozen):
    """Source column name for each canonical click-log column (CONTRACTS §1); None = absent.

    An optional column left at its canonical name (``market: market``) is simply unused when the
    source has no such column (logged once); one mapped to another name must exist. ``user_id``
    may be absent when ``session_id`` is there (the session then stands for the user); without
    ``event`` every row is a click."""

    user_id: str | None = "user_id"
    ts: str = "ts"
    item_id: str = "item_id"
    event: str | None = "event"
    session_id: str | None = "session_id"  # the source's sessions, used instead of the gap
    market: str | None = "market"
    seq: str | None = None  # order of events sharing a ts (trivago: step)
    shown_items: str | None = None  # items on screen at the event (trivago: impressions)
    shown_prices: str | None = None  # prices aligned with shown_items (trivago: prices)

    def present(self) -> dict[str, str]:
        """Canonical name -> source name for every mapped column."""
        return {k: v for k, v in self.model_dump().items() if v is not None}


class ItemColumnMap(_Frozen):
    """Source column names of the optional item table (CONTRACTS §1b); its other columns are
    kept as item attributes (price, type, ...)."""

    item_id: str = "item_id"
    market: str | None = "market"

    def present(self) -> dict[str, str]:
        return {k: v for k, v in self.model_dump().items() if v is not None}


class SourceConfig(_Frozen):
    """How to read one source's click log and map it onto the contract."""

    format: Literal["auto", "parquet", "csv"] = "auto"
    columns: ColumnMap = ColumnMap()
    ts_kind: Literal["auto", "epoch_s", "epoch_ms", "timestamp"] = "auto"
    list_separator: str = "|"  # for shown_items stored as one joined string (trivago)
    # source event name -> view | click | book | drop (drop: not an item event, counted only)
    events: dict[str, Literal["view", "click", "book", "drop"]] = Field(
        default_factory=lambda: {"view": "view", "click": "click", "book": "book"}
    )
    items_from_shown: bool = False  # derive the item table (CONTRACTS §1b) from shown items
    item_columns: ItemColumnMap = ItemColumnMap()  # for an item table file (paths.items)


class IngestConfig(_Frozen):
    max_bad_share: float = Field(0.05, ge=0.0, le=1.0)  # quarantined / item rows above this fails
    max_id_length: int = Field(256, ge=1)
    lateness_hours: float = Field(24.0, ge=0)  # rows this late after the interval end are bad


class SessionizeConfig(_Frozen):
    """Session rules; defaults from Airbnb's KDD'18 listing-embedding paper."""

    gap_minutes: float = Field(30.0, gt=0)  # inactivity that starts a new session
    # drop non-booking events left within this many seconds (Airbnb); None: off. Off by default:
    # on the real logs browsing seconds apart is normal (trivago, yoochoose, globo lost 27-80% of
    # their events to a 30 s rule), and the generator's accidental clicks are few
    min_dwell_s: float | None = Field(None, ge=0)
    collapse_repeats: bool = True  # consecutive events on one item count once in item_ids
    min_distinct_items: int = Field(2, ge=1)
    max_session_length: int = Field(200, ge=2)
    hash_user_ids: bool = True  # written as HMAC-SHA256(salt, id): jobs/user_hash.py
    salt_env: str = "EMBEDDING_USER_SALT"  # name of the variable holding the salt, never the salt


class CompletenessConfig(_Frozen):
    """Before training, each day of the run's interval is compared with the days before it."""

    enabled: bool = True
    trailing_days: int = Field(7, ge=1)  # the reference: median events/day over these days
    min_history_days: int = Field(3, ge=1)  # fewer earlier days with counts: check skipped
    # a day below min_ratio x the median is partial (fails); above max_ratio x: a warning
    min_ratio: float = Field(0.5, gt=0.0, le=1.0)
    max_ratio: float = Field(3.0, ge=1.0)


class WindowConfig(_Frozen):
    days: int = Field(8, ge=1)  # days of sessions the model sees, the holdout included
    retention_days: int = Field(30, ge=1)  # session partitions older than this are deleted


class Word2VecParams(_Frozen):
    """gensim Word2Vec knobs; see gensim's docs for each. Tuning them matters a lot for recsys.

    ``vector_size``, ``sample`` and ``epochs`` left at None are derived from the training corpus
    (``embedding.train.auto_params``); the values used are recorded in the manifest and the
    report."""

    vector_size: int | None = Field(None, ge=2, le=4096)
    window: int = Field(5, ge=1)
    negative: int = Field(10, ge=1)  # noise items drawn per positive pair
    ns_exponent: float = 0.75  # lower: rare items are drawn as negatives more often
    sample: float | None = Field(None, ge=0)  # down-sampling threshold for very popular items
    epochs: int | None = Field(None, ge=1)
    min_count: int = Field(1, ge=1)
    alpha: float = Field(0.025, gt=0)
    min_alpha: float = Field(0.0001, ge=0)
    sg: Literal[0, 1] = 1  # 1 skip-gram, 0 CBOW
    workers: int = Field(2, ge=1)  # >1 is faster but not deterministic
    booked_oversample: int = Field(1, ge=1)  # booked sessions repeated this often in the stream
    # gensim, or our own PyTorch trainer (embedding.train.sgns) with Airbnb's objective:
    trainer: Literal["gensim", "torch"] = "gensim"
    global_context: bool = True  # torch: a booked item is a context of its whole session
    market_negatives: int = Field(0, ge=0)  # torch: extra negatives from the centre's market
    batch_size: int = Field(4096, ge=1)  # torch: positive pairs per step
    # torch: "sgd" sums the batch's losses and steps at alpha decayed to min_alpha (word2vec's
    # updates, batched); "adam": SparseAdam on the mean loss at torch_lr, decayed to a tenth
    torch_optimizer: Literal["sgd", "adam"] = "sgd"
    torch_lr: float = Field(0.01, gt=0)
    device: str = "auto"  # torch: auto | cpu | cuda | cuda:N


class FinetuneParams(_Frozen):
    """Contrastive fine-tuning on booking pairs, kept close to the skip-gram vectors
    (``embedding.train.finetune`` explains each knob)."""

    enabled: bool = True
    # what is trained on: booking pairs (context -> booked, Airbnb), click transitions (item ->
    # an item up to transition_window positions later in a training session: every log has
    # them, few have bookings) or both
    pairs: Literal["booking", "transitions", "both"] = "booking"
    transition_window: int = Field(1, ge=1)
    loss: Literal["infonce", "triplet"] = "infonce"  # triplet: the classic margin alternative
    compare_loss: bool = True  # also train the other loss, reported side by side, not published
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(256, ge=2)
    lr: float = Field(0.001, gt=0)
    lr_schedule: Literal["constant", "cosine"] = "cosine"  # cosine decay after warmup
    warmup_epochs: float = Field(0.5, ge=0)  # linear warmup, in epochs
    weight_decay: float = Field(0.0, ge=0)  # on the rows a batch touches only
    grad_clip: float | None = Field(1.0, gt=0)  # max gradient norm; None: off
    temperature: float = Field(0.2, gt=0)  # logits scale = 1 / temperature (initial if learned)
    learn_temperature: bool = False
    symmetric: bool = False  # also booked -> context
    hard_negative_ratio: float = Field(0.25, ge=0)  # same-market negatives per in-batch negative
    logq_correction: bool = True  # subtract log(booked-item frequency) from in-batch logits
    queue_size: int = Field(0, ge=0)  # MoCo queue of earlier positives (momentum table); 0: off
    momentum: float = Field(0.99, ge=0, lt=1)  # of the moving-average table feeding the queue
    triplet_margin: float = Field(0.2, gt=0)
    anchor_weight: float = Field(1.0, ge=0)  # L2 pull of moved vectors back to the base vectors
    val_fraction: float = Field(0.1, ge=0, lt=1)  # of train pairs, when no validation pairs
    patience: int = Field(3, ge=1)  # epochs without a better val recall before stopping
    recall_k: int = Field(10, ge=1)
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps


class EvaluateConfig(_Frozen):
    holdout: Literal["last_day", "last_fraction"] = "last_day"
    holdout_fraction: float = Field(0.2, gt=0, lt=1)  # of sessions, by start time (last_fraction)
    # validation: the latest share of the non-test sessions; it picks base or fine-tuned, stops
    # the fine-tune early and ranks the sweep, so the test split is only ever reported
    val_fraction: float = Field(0.1, ge=0, lt=1)
    # after the gate, the chosen vectors are retrained on every session of the window (train,
    # validation and test) with the same settings and published: the gated model never saw the
    # latest sessions, and for short-lived items (news) those are the ones that matter
    refit: bool = True
    # a last_day holdout with fewer next-item cases than this falls back to last_fraction
    min_test_cases: int = Field(1000, ge=0)
    max_cases: int = Field(20000, ge=1)  # sampled with the seed when there are more
    batch_size: int = Field(2048, ge=1)
    # count-based baselines scored on the same cases (embedding.quality.baselines)
    cooccurrence_window: int = Field(5, ge=1)  # items this close in a train session co-occur
    ppmi_svd: bool = True  # SVD of the PPMI co-occurrence matrix (Levy et al. 2015)
    ppmi_svd_dim: int | None = Field(None, ge=2)  # None: the trained vectors' dimension
    booked_max_position: int = Field(10, ge=1)  # booked-item rank: click positions reported


class ColdStartConfig(_Frozen):
    """Vectors for items of the item table (CONTRACTS §1b) too rare to train (Airbnb: the mean
    of the 3 most similar listings of the same market by type and price)."""

    enabled: bool = True
    k: int = Field(3, ge=1)  # similar trained items averaged
    measure_items: int = Field(500, ge=0)  # trained items hidden to measure it; 0: off


class GateConfig(_Frozen):
    """The published vectors must reach these next-item figures on the holdout."""

    metric: Literal["hr@10", "mrr@20"] = "hr@10"
    min_value: float = Field(0.0, ge=0)  # absolute floor of the metric; 0: off
    # the candidate must beat min_lift x popularity with this one-sided confidence: the lower
    # bound of a paired bootstrap over test sessions of candidate - min_lift x popularity > 0
    min_lift_over_popularity: float = Field(1.0, ge=0)
    confidence: float = Field(0.95, ge=0.5, lt=1)
    bootstrap_resamples: int = Field(1000, ge=100)
    # the latest version published before this run's last day, re-scored on the same cases: the
    # candidate may fall below it by at most this share of its figure
    max_drop_vs_previous: float = Field(0.1, ge=0, le=1)


class SparkConfig(_Frozen):
    master: str = "local[2]"
    driver_memory: str = "2g"
    shuffle_partitions: int = Field(4, ge=1)


class ServingConfig(_Frozen):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    hnsw_m: int = Field(16, ge=2)
    hnsw_ef_construction: int = Field(64, ge=1)
    hnsw_ef_search: int = Field(256, ge=1)
    max_k: int = Field(100, ge=1, le=100)  # le: serving.requests.MAX_K_LIMIT (the cost cap)
    # ANN candidates fetched per answer: max(k * this, k + 10), then re-scored exactly
    candidate_factor: int = Field(4, ge=1)
    # threads that run the single-query routes' ANN searches off the event loop
    # (serving.searcher); FAISS releases the GIL, so they search in parallel with the HTTP work
    search_threads: int = Field(2, ge=1, le=64)
    # seconds between reads of CURRENT; a new version there is loaded and swapped in (0: never)
    poll_interval_s: float = Field(5.0, ge=0)
    # /health answers 503 "stale" when the served version's created_at is older (None: no limit)
    max_version_age_hours: float | None = Field(48.0, gt=0)
    # env var holding the token for POST /admin/reload; unset: loopback clients only
    admin_token_env: str = "EMBEDDING_ADMIN_TOKEN"
    # item ids never returned (text: one per line, or Parquet with item_id); reread when it
    # changes, at each poll; relative paths are from the project root (None: no blocklist)
    blocklist_path: str | None = None
    # request limits (serving.limits): a larger body is 413; more heavy (batch) requests than
    # this at once are 429 with Retry-After (the cost cap is serving.requests.MAX_NEIGHBORS)
    max_body_bytes: int = Field(1_048_576, ge=1024)
    max_heavy_requests: int = Field(4, ge=1)

    def blocklist_file(self) -> Path | None:
        if self.blocklist_path is None:
            return None
        path = Path(self.blocklist_path).expanduser()
        return path if path.is_absolute() else (PROJECT_ROOT / path).resolve()


class PublishConfig(_Frozen):
    """Housekeeping of the publish root (CONTRACTS §2); never changes the model or its id."""

    # version folders kept (newest by day); CURRENT, the one before it and a pinned one always
    keep_versions: int = Field(10, ge=2)


class PathsConfig(_Frozen):
    input: str | None = None  # click-log file or folder (the DAG reads it from here)
    items: str | None = None  # optional item table file or folder (CONTRACTS §1b)
    publish_root: str = "publish"
    work_dir: str | None = None  # sessions and run artefacts; default <publish_root>/.work

    def resolve(self, value: str) -> Path:
        path = Path(value).expanduser()
        return path if path.is_absolute() else (PROJECT_ROOT / path).resolve()


class Config(_Frozen):
    seed: int = 42
    source: SourceConfig = SourceConfig()
    ingest: IngestConfig = IngestConfig()
    sessionize: SessionizeConfig = SessionizeConfig()
    window: WindowConfig = WindowConfig()
    completeness: CompletenessConfig = CompletenessConfig()
    word2vec: Word2VecParams = Word2VecParams()
    finetune: FinetuneParams = FinetuneParams()
    evaluate: EvaluateConfig = EvaluateConfig()
    cold_start: ColdStartConfig = ColdStartConfig()
    gate: GateConfig = GateConfig()
    spark: SparkConfig = SparkConfig()
    serving: ServingConfig = ServingConfig()
    publish: PublishConfig = PublishConfig()
    paths: PathsConfig = PathsConfig()

    @model_validator(mode="after")
    def _check_events(self) -> Config:
        if not any(v in EVENT_KINDS for v in self.source.events.values()):
            raise ValueError("source.events maps no source event to view, click or book")
        if self.window.retention_days < self.window.days:
            raise ValueError(
                f"window.retention_days={self.window.retention_days} is shorter than the "
                f"training window window.days={self.window.days}"
            )
        if self.source.items_from_shown and not self.source.columns.shown_items:
            raise ValueError("source.items_from_shown needs source.columns.shown_items")
        if self.source.items_from_shown and self.paths.items:
            raise ValueError(
                "paths.items and source.items_from_shown both give the item table: pick one"
            )
        return self

    def fingerprint(self) -> str:
        """sha256 over everything that shapes the model (paths excluded)."""
        not_model = {"paths", "serving", "publish", "completeness"}
        payload = self.model_dump(mode="json", exclude=not_model)
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    node = tree
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {key}: '{part}' is a value, not a section")
        node = child
    node[parts[-1]] = value


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())


def parse_override(item: str) -> tuple[str, Any]:
    """'a.b=v' -> ('a.b', v) with v parsed as a YAML scalar ('10' -> 10, 'null' -> None)."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {item!r}: expected key=value, e.g. word2vec.epochs=5")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {item!r}: value is not valid YAML ({_one_line(exc)})") from exc
    return key.strip(), value


def _format_validation(exc: ValidationError, origin: str) -> str:
    problems = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "<root>"
        problems.append(f"{where}: {err['msg']}")
    return f"{origin}: invalid configuration: " + "; ".join(problems)


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({_one_line(exc)})") from exc
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections")
    return loaded


def load_config(
    path: Path | str | None = None,
    overrides: list[str] | None = None,
    source: Path | str | None = None,
) -> Config:
    """Read a YAML config (None = built-in defaults), layer a mapping-only source file over its
    ``source`` section (its keys replace the config's, e.g. ``columns`` as a whole), then apply
    dotted overrides."""
    tree: dict[str, Any] = {}
    origin = "defaults"
    if path is not None:
        origin = str(path)
        tree = _read_yaml(Path(path))
    if source is not None:
        mapping = _read_yaml(Path(source))
        extra = sorted(set(mapping) - {"source"})
        if extra:
            raise ConfigError(
                f"{source}: a source file maps columns and events only (the 'source' section); "
                f"it also sets {', '.join(extra)}: put those in a config (--conf) or --set"
            )
        tree = {**tree, "source": {**tree.get("source", {}), **mapping.get("source", {})}}
        origin = f"{origin} + {source}"
    for item in overrides or []:
        key, value = parse_override(item)
        _set_dotted(tree, key, value)
    try:
        return Config.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(_format_validation(exc, origin)) from exc
