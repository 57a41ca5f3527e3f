"""One exception hierarchy for every error this project raises on purpose.

The CLI maps them to exit codes (CONTRACTS §3): ``InputError`` and ``ConfigError`` exit 2,
``QualityGateError`` exits 3, anything else 1. Messages say what, where and what to do.
"""


class EmbeddingError(Exception):
    """Base for every error this project raises on purpose."""

    exit_code = 1


class ConfigError(EmbeddingError):
    """The configuration file or an override is invalid."""

    exit_code = 2


class InputError(EmbeddingError):
    """The click log is missing, unreadable, empty or has too many bad rows."""

    exit_code = 2


class QualityGateError(EmbeddingError):
    """The candidate's metrics are below the gate; CURRENT is untouched."""

    exit_code = 3


class PublishError(EmbeddingError):
    """Publishing a version failed; CURRENT is untouched."""

    exit_code = 1
