"""Keyed hashing of user ids: HMAC-SHA256 with a secret salt that never reaches a log or a plan.

Where the salt comes from:

- ``$EMBEDDING_USER_SALT`` (the variable named by ``sessionize.salt_env``) when it is set; it must
  hold at least ``MIN_SALT_BYTES`` bytes, or the run stops (exit 2) before reading any event;
- otherwise a random salt created on first use in ``<work_dir>/.user_salt`` (owner-only, mode
  0600) and reused by every later run on that work folder, so zero-config runs stay stable.

The stored id is the first 16 hex of HMAC-SHA256(salt, user_id). Spark composes the HMAC from
``sha2``, ``unhex`` and ``concat``; the two padded keys travel as a one-row broadcast table, not
as literals, so ``explain()`` and the Spark UI never show them. Nothing derived from the salt is
recorded: the manifest says only which source the salt came from.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import stat
from pathlib import Path

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from embedding.core.errors import ConfigError
from jobs import columns as C

logger = logging.getLogger(__name__)

MIN_SALT_BYTES = 16
SALT_FILE = ".user_salt"
_BLOCK = 64  # SHA-256's block size: HMAC pads (or hashes) the key to it
_IPAD, _OPAD = "_hmac_ipad", "_hmac_opad"


def resolve_salt(env_name: str, work_dir: Path) -> tuple[bytes, str]:
    """The salt and where it came from (``env:<NAME>`` or ``file``)."""
    value = os.environ.get(env_name)
    if value:
        salt = value.encode()
        if len(salt) < MIN_SALT_BYTES:
            raise ConfigError(
                f"${env_name} holds {len(salt)} bytes; a user-id salt needs at least "
                f"{MIN_SALT_BYTES}; make one with `openssl rand -hex 32`"
            )
        return salt, f"env:{env_name}"
    return _file_salt(work_dir / SALT_FILE), "file"


def _file_salt(path: Path) -> bytes:
    """Read the stored salt, or create it atomically (O_EXCL: two first runs agree on one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _read_salt_file(path)
    with os.fdopen(fd, "w") as out:
        out.write(secrets.token_hex(32))
        out.flush()
        os.fsync(out.fileno())
    logger.info("created a random user-id salt in %s (owner-only: keep it with the work)", path)
    return _read_salt_file(path)


def _read_salt_file(path: Path) -> bytes:
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"{path}: the user-id salt is readable by others (mode {stat.filemode(mode)}); "
            f"run `chmod 600 {path}`"
        )
    salt = path.read_text().strip().encode()
    if len(salt) < MIN_SALT_BYTES:
        raise ConfigError(
            f"{path}: the stored user-id salt holds {len(salt)} bytes (at least "
            f"{MIN_SALT_BYTES} needed); delete the file to create a new one (this changes "
            "the hashed ids of every day sessionized afterwards)"
        )
    return salt


def hmac_pads(salt: bytes) -> tuple[bytes, bytes]:
    """HMAC's inner and outer padded keys (RFC 2104)."""
    key = hashlib.sha256(salt).digest() if len(salt) > _BLOCK else salt
    key = key.ljust(_BLOCK, b"\0")
    return bytes(b ^ 0x36 for b in key), bytes(b ^ 0x5C for b in key)


def hash_users(events: DataFrame, salt: bytes) -> DataFrame:
    """Replace ``user_id`` by the first 16 hex of HMAC-SHA256(salt, user_id)."""
    ipad, opad = hmac_pads(salt)
    spark = events.sparkSession
    keys = spark.createDataFrame([(ipad, opad)], f"{_IPAD} binary, {_OPAD} binary")
    user = F.col(C.USER_ID).cast("string").cast("binary")
    inner = F.unhex(F.sha2(F.concat(F.col(_IPAD), user), 256))
    digest = F.sha2(F.concat(F.col(_OPAD), inner), 256)
    return (
        events.crossJoin(F.broadcast(keys))
        .withColumn(C.USER_ID, F.substring(digest, 1, 16))
        .drop(_IPAD, _OPAD)
    )
