"""Tests for the typed, frozen configuration: real YAML files, `--set` overrides, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from embedding.core.config import Config, load_config, parse_override
from embedding.core.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
DEFAULT = ROOT / "conf" / "default.yaml"
TRIVAGO = ROOT / "conf" / "sources" / "trivago.yaml"


def test_default_yaml_loads_with_its_values() -> None:
    cfg = load_config(DEFAULT)
    assert isinstance(cfg, Config)
    assert cfg.seed == 42
    # corpus-size knobs are derived from the data unless set (embedding.train.auto_params)
    assert cfg.word2vec.vector_size is None
    assert cfg.word2vec.sample is None and cfg.word2vec.epochs is None
    assert cfg.word2vec.negative == 10
    assert cfg.sessionize.min_dwell_s is None
    assert cfg.gate.min_value == 0.0
    assert cfg.finetune.enabled is True
    assert cfg.evaluate.holdout == "last_day"
    assert cfg.source.columns.item_id == "item_id"
    assert cfg.paths.publish_root == "publish"


def test_trivago_yaml_maps_its_columns_and_events() -> None:
    cfg = load_config(DEFAULT, source=TRIVAGO)
    assert cfg.source.format == "parquet"
    assert cfg.source.ts_kind == "epoch_s"
    assert cfg.source.columns.item_id == "reference"
    assert cfg.source.columns.session_id == "session_id"
    assert cfg.source.columns.shown_items == "impressions"
    assert cfg.source.events["clickout item"] == "book"
    assert cfg.source.events["filter selection"] == "drop"
    # mapping only: everything else is the default config's
    assert cfg.model_dump(exclude={"source"}) == load_config(DEFAULT).model_dump(exclude={"source"})


def test_a_source_file_may_hold_the_source_section_only(tmp_path: Path) -> None:
    mapping = tmp_path / "m.yaml"
    mapping.write_text("source:\n  columns: {item_id: sku}\ngate:\n  min_value: 0.5\n")
    with pytest.raises(
        ConfigError, match=r"m.yaml: a source file maps columns and events only.*gate"
    ):
        load_config(DEFAULT, source=mapping)
    mapping.write_text("source:\n  columns: {item_id: sku}\n  ts_kind: epoch_ms\n")
    cfg = load_config(DEFAULT, ["source.format=csv"], source=mapping)
    assert cfg.source.columns.item_id == "sku" and cfg.source.ts_kind == "epoch_ms"
    assert cfg.source.columns.market == "market"  # unmapped columns keep their canonical names
    assert cfg.source.format == "csv"  # --set still wins


def test_no_path_gives_builtin_defaults() -> None:
    assert load_config(None) == Config()


def test_overrides_are_parsed_and_typed() -> None:
    cfg = load_config(
        DEFAULT,
        [
            "word2vec.epochs=3",
            "finetune.enabled=false",
            "finetune.lr=0.01",
            "paths.input=null",
            "evaluate.holdout=last_fraction",
        ],
    )
    assert cfg.word2vec.epochs == 3
    assert type(cfg.word2vec.epochs) is int
    assert cfg.finetune.enabled is False
    assert cfg.finetune.lr == pytest.approx(0.01)
    assert cfg.paths.input is None
    assert cfg.evaluate.holdout == "last_fraction"


def test_later_override_wins() -> None:
    cfg = load_config(DEFAULT, ["word2vec.epochs=3", "word2vec.epochs=4"])
    assert cfg.word2vec.epochs == 4


def test_parse_override_splits_on_first_equals() -> None:
    assert parse_override(" word2vec.epochs = 5") == ("word2vec.epochs", 5)
    assert parse_override("source.list_separator=a=b") == ("source.list_separator", "a=b")
    assert parse_override("paths.work_dir=") == ("paths.work_dir", "")


@pytest.mark.parametrize("key", ["nosuchsection", "word2vec.foo", "source.columns.bar"])
def test_unknown_key_is_an_error_naming_it(key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(DEFAULT, [f"{key}=1"])


def test_unknown_key_in_the_file_is_an_error_naming_it(tmp_path: Path) -> None:
    conf = tmp_path / "conf.yaml"
    conf.write_text("word2vec:\n  epochs: 3\n  epochz: 4\n")
    with pytest.raises(ConfigError, match=r"word2vec\.epochz") as err:
        load_config(conf)
    assert str(conf) in str(err.value)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("word2vec.epochs=abc", "word2vec.epochs"),
        ("word2vec.epochs=0", "word2vec.epochs"),  # below its ge=1 bound
        ("finetune.enabled=maybe", "finetune.enabled"),
        ("evaluate.holdout=random", "evaluate.holdout"),
        ("word2vec=3", "word2vec"),
    ],
)
def test_wrong_type_or_value_is_an_error_naming_the_key(override: str, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(DEFAULT, [override])


def test_override_below_a_value_is_an_error() -> None:
    with pytest.raises(ConfigError, match="'seed' is a value, not a section"):
        load_config(DEFAULT, ["seed.x=1"])


@pytest.mark.parametrize("item", ["noequals", "=5", " =5"])
def test_malformed_override_is_an_error(item: str) -> None:
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config(DEFAULT, [item])


def test_override_value_that_is_not_yaml_is_an_error() -> None:
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(DEFAULT, ["word2vec.epochs=[1, 2"])


def test_missing_config_file_is_an_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="config file not found") as err:
        load_config(missing)
    assert str(missing) in str(err.value)


def test_invalid_yaml_file_is_an_error(tmp_path: Path) -> None:
    conf = tmp_path / "broken.yaml"
    conf.write_text("word2vec:\n  epochs: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML") as err:
        load_config(conf)
    assert str(conf) in str(err.value)


def test_yaml_file_that_is_not_a_mapping_is_an_error(tmp_path: Path) -> None:
    conf = tmp_path / "list.yaml"
    conf.write_text("- seed\n- 42\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(conf)


def test_empty_yaml_file_gives_defaults(tmp_path: Path) -> None:
    conf = tmp_path / "empty.yaml"
    conf.write_text("# nothing set\n")
    assert load_config(conf) == Config()


def test_events_must_map_something_to_an_item_event() -> None:
    with pytest.raises(ConfigError, match="maps no source event"):
        load_config(None, ["source.events={a: drop}"])


def test_config_is_frozen() -> None:
    cfg = load_config(DEFAULT)
    negative = cfg.word2vec.negative
    with pytest.raises(ValidationError):
        cfg.seed = 1  # type: ignore[misc]
    with pytest.raises(ValidationError):
        cfg.word2vec.negative = negative + 1  # type: ignore[misc]
    assert cfg.seed == 42
    assert cfg.word2vec.negative == negative


def test_fingerprint_ignores_paths() -> None:
    base = load_config(DEFAULT)
    moved = load_config(
        DEFAULT,
        ["paths.publish_root=/elsewhere", "paths.input=/other/clicks", "paths.work_dir=/w"],
    )
    assert moved.fingerprint() == base.fingerprint()
    assert load_config(DEFAULT).fingerprint() == base.fingerprint()  # stable across loads


def test_fingerprint_changes_with_a_model_knob() -> None:
    base = load_config(DEFAULT)
    changed = load_config(DEFAULT, ["word2vec.negative=15"])
    assert changed.fingerprint() != base.fingerprint()
    assert len(base.fingerprint()) == 64
