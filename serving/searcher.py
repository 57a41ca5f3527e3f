"""The searcher threads: where the single-query routes run their ANN search, off the event loop.

FAISS searches with the GIL released, so a search on one of these threads runs in parallel with
the event loop's HTTP work (parsing, routing, JSON) on the other core. Answered on the event loop
instead, every search stalled it: at 1M x 32 and 500 req/s on 2 cores the loop thread was busy
about 90 % of the time (1.6 ms of CPU per request, half of it the search), so whenever a
publish or a version load took a share of the cores, requests queued behind it (``make
bench-serve``: a swap's max 1.3-2.3 s in 3 of 4 swaps). With the search on 2 threads the same
swaps stayed under 35 ms; 1 thread gave 21-72 ms (``ServingConfig.search_threads``).

Each thread runs FAISS with one OpenMP thread (``single_threaded_search``): a request is one
query, and idle OpenMP workers spin on the cores that answer requests.
"""

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from fastapi import FastAPI

T = TypeVar("T")


def searcher_threads(n_threads: int) -> ThreadPoolExecutor:
    """The app's searcher pool (threads start on first use)."""
    return ThreadPoolExecutor(
        max_workers=n_threads, thread_name_prefix="searcher", initializer=single_threaded_search
    )


async def off_loop(app: FastAPI, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` on one of ``app``'s searcher threads; its exceptions propagate."""
    call = functools.partial(fn, *args, **kwargs)
    return await asyncio.get_running_loop().run_in_executor(app.state.searcher, call)


def single_threaded_search() -> None:
    """One OpenMP thread for FAISS on the calling thread (OpenMP's setting is per thread): a
    request is one query, and idle OpenMP workers spin-wait on the very cores that answer
    requests (measured at 1M x 32, 500 req/s on 2 cores: p99 89 ms and max 1.4 s with two)."""
    import faiss

    faiss.omp_set_num_threads(1)
