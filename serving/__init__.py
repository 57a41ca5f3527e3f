"""Nearest-neighbour service over a published version of the item vectors.

Input: a publish root laid out as in CONTRACTS.md §2 (``CURRENT`` names a folder under
``versions/`` holding ``item_vectors.parquet`` and ``manifest.json``). Output: an HTTP API that
answers "items similar to X" by cosine similarity.

- ``serving.model``: ``load_version`` verifies a version (checksum, dim, unit norm, unique ids),
  reading its files and opening or building its ANN index with ``serving.loading``, into an
  immutable ``LoadedVersion`` with ``similar(item_id, k)``.
- ``serving.app``: ``create_app(publish_root, cfg)`` assembles the FastAPI app; its lifespan loads
  ``CURRENT`` once, ``reload`` swaps in a new version atomically.
- ``python -m serving --publish-root DIR`` runs it under uvicorn; ``python -m serving.probe``
  starts it, asks for one item's neighbours over HTTP and prints them.
"""
