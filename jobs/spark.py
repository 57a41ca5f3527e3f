"""One SparkSession helper for local runs, tests and spark-submit on a cluster."""

from __future__ import annotations

import logging
import os
import sys

from pyspark.sql import SparkSession

from embedding.config import SparkConfig

logger = logging.getLogger(__name__)


def get_spark(cfg: SparkConfig, app_name: str = "item-embeddings") -> SparkSession:
    """Return the active session, or start one on ``cfg.master`` (UTC, UI off, quiet logs).

    Settings that need a fresh JVM (driver memory) apply only when no session is running yet.
    """
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    logger.info("starting Spark on %s", cfg.master)
    spark = (
        SparkSession.builder.master(cfg.master)
        .appName(app_name)
        .config("spark.driver.memory", cfg.driver_memory)
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.shuffle.partitions", str(cfg.shuffle_partitions))
        .config("spark.sql.ansi.enabled", "false")
        .config("spark.sql.parquet.inferTimestampNTZ.enabled", "false")
        .config("spark.sql.parquet.outputTimestampType", "TIMESTAMP_MICROS")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    return spark
