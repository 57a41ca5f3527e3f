"""Item-embedding pipeline: click logs in, versioned item vectors out.

Layers, each importing only those before it (``tests/test_import_graph.py``): ``core`` (config,
errors, durable writes, hashes, the lock, the work folder), ``vectors`` (``ItemVectors``, Parquet,
the ANN index, published versions), ``train`` (skip-gram, fine-tune), ``quality`` (holdout,
metrics, baselines, gate, cold start, report), ``stages`` (one module per pipeline stage, each
returning a typed result), ``devtools`` (generator, local Airflow), ``commands`` (the CLI's
bodies); then the entry points ``cli``, ``sweep`` and ``alerts``. The Spark job lives in
``jobs/``, the HTTP service in ``serving/``; both use only ``core`` and ``vectors``.
"""

from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
__version__ = "0.1.0"
