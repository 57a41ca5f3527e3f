"""One SparkSession helper for local runs, tests and spark-submit on a cluster."""

from __future__ import annotations

import logging
import os
import sys

from pyspark.sql import SparkSession

from embedding.core.config import SparkConfig

logger = logging.getLogger(__name__)


def get_spark(cfg: SparkConfig, app_name: str = "item-embeddings") -> SparkSession:
    """Return the active session, or start one on ``cfg.master`` (UTC, UI off, quiet logs).

    One code path for every master: ``local[N]`` by default, ``spark://host:port`` for a
    standalone cluster (``--set spark.master=...``), or whatever ``spark-submit --master`` says.
    Settings that need a fresh JVM (driver memory) apply only when no session is running yet.
    """
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    builder = SparkSession.builder
    if "PYSPARK_GATEWAY_PORT" in os.environ:  # under spark-submit: its --master decides
        logger.info("starting Spark under spark-submit")
    else:
        logger.info("starting Spark on %s", cfg.master)
        builder = builder.master(cfg.master)
    spark = (
        builder.appName(app_name)
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
