"""Spark jobs: ingest and validate click logs, cut sessions, extract booking pairs."""
