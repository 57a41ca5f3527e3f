"""Item-embedding pipeline: click logs in, versioned item vectors out.

Stages: ingest and sessionize (``jobs/``, Spark), skip-gram training (``train_w2v``),
contrastive fine-tuning (``finetune``), offline evaluation (``evaluate``), atomic publishing
(``publish``); ``pipeline`` wires them for the CLI and the Airflow DAG.
"""

from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
__version__ = "0.1.0"
