"""Checks on the parameters a DAG run is triggered with: whoever can trigger a run is not the
operator, so a run may tune the model, never point the pipeline at other folders, hosts or
secrets.

- ``conf``: a config file inside the project's ``conf/`` (or a folder the operator lists in
  ``$EMBEDDING_CONF_DIRS``, ``os.pathsep``-separated), after following links.
- ``overrides``: ``key=value`` items whose key is on the allow-list below: the model's knobs and
  the session rules. Paths, hosts, ports, the gate, retention and every ``*_env`` name are not.

The CLI's ``--set``, the sweep and the benchmarks are not checked: they run as the operator.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from embedding import PROJECT_ROOT
from embedding.core.config import parse_override
from embedding.core.errors import ConfigError

CONF_DIRS_ENV = "EMBEDDING_CONF_DIRS"
# whole sections of model knobs
ALLOWED_SECTIONS = ("word2vec", "finetune", "evaluate", "cold_start")
# single keys elsewhere
ALLOWED_KEYS = frozenset(
    {
        "seed",
        "sessionize.gap_minutes",
        "sessionize.min_dwell_s",
        "sessionize.collapse_repeats",
        "sessionize.min_distinct_items",
        "sessionize.max_session_length",
    }
)
# never, even inside an allowed section
_DENIED_WORDS = ("env", "path", "dir", "host", "port", "url", "token")


def allowed_override_key(key: str) -> bool:
    parts = key.split(".")
    if any(word in part for part in parts for word in _DENIED_WORDS):
        return False
    return key in ALLOWED_KEYS or (len(parts) == 2 and parts[0] in ALLOWED_SECTIONS)


def conf_dirs() -> list[Path]:
    """Where a run's ``conf`` may live: the project's conf/ and the operator's extra folders."""
    extra = [Path(p) for p in os.environ.get(CONF_DIRS_ENV, "").split(os.pathsep) if p]
    return [(PROJECT_ROOT / "conf").resolve(), *(p.resolve() for p in extra)]


def checked_run_params(params: Mapping[str, Any], default_conf: str) -> tuple[str, list[str]]:
    """(config file, overrides) of a DAG run from its params, or ConfigError naming the first
    parameter refused. ``default_conf`` (the operator's ``$EMBEDDING_CONF``) is not checked."""
    conf = params.get("conf")
    overrides = params.get("overrides") or []
    if conf is None or conf == "":
        conf = default_conf
    else:
        conf = str(_checked_conf(conf))
    if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
        raise ConfigError("run parameter 'overrides' must be a list of key=value strings")
    refused = [item for item in overrides if not allowed_override_key(parse_override(item)[0])]
    if refused:
        raise ConfigError(
            f"run parameter 'overrides': {', '.join(repr(r) for r in refused)} may not be set "
            f"by a run; a run may set {', '.join(s + '.*' for s in ALLOWED_SECTIONS)} and "
            f"{', '.join(sorted(ALLOWED_KEYS))}. Anything else is the operator's: put it in a "
            "config under conf/"
        )
    return conf, list(overrides)


def _checked_conf(conf: Any) -> Path:
    if not isinstance(conf, str):
        raise ConfigError(f"run parameter 'conf' must be a file name, not {type(conf).__name__}")
    path = Path(conf)
    if not path.is_absolute():
        path = PROJECT_ROOT / "conf" / path
    resolved = path.resolve()
    allowed = conf_dirs()
    if not any(resolved.is_relative_to(d) for d in allowed):
        raise ConfigError(
            f"run parameter 'conf' {conf!r} is outside the project's conf/ folder; a run may "
            f"only name a config there (or in a folder listed in ${CONF_DIRS_ENV})"
        )
    if resolved.suffix not in (".yaml", ".yml") or not resolved.is_file():
        raise ConfigError(f"run parameter 'conf' {conf!r}: no such .yaml file under conf/")
    return resolved


def run_conf_args(params: Mapping[str, Any], default_conf: str) -> tuple[str, list[str]]:
    """``checked_run_params`` for a task: a refusal fails the task without retries (a retry
    would be refused the same way), before it touches anything."""
    from airflow.sdk.exceptions import AirflowFailException

    try:
        return checked_run_params(params, default_conf)
    except ConfigError as exc:
        raise AirflowFailException(f"ConfigError: {exc}") from exc
