"""``python -m serving.probe --publish-root DIR``: one neighbour lookup through the real service.

Starts ``python -m serving`` as a subprocess on a free port of 127.0.0.1, waits for ``/health``,
asks for the neighbours of one item over HTTP and prints them as a small table; the subprocess
is always stopped. The item defaults to the one with the most events in the version served.
``make run`` calls this to show an example lookup. Exit codes: 0 shown, 2 bad arguments or
nothing published, 1 the service failed (its output's tail goes to stderr).
"""

import argparse
import logging
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote

import httpx
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from embedding import PROJECT_ROOT
from embedding.core.errors import EmbeddingError
from embedding.vectors.parquet_io import VECTORS_FILE
from embedding.vectors.versions import VERSIONS, read_current

logger = logging.getLogger(__name__)

HEALTH_TIMEOUT_S = 60.0
POLL_INTERVAL_S = 0.2
STOP_TIMEOUT_S = 10.0
OUTPUT_TAIL_LINES = 20


class ServiceError(EmbeddingError):
    """The service subprocess did not come up or answered with an error."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _tail(log: IO[bytes], lines: int = OUTPUT_TAIL_LINES) -> str:
    log.flush()
    log.seek(0)
    text = log.read().decode(errors="replace").rstrip()
    return "\n".join(text.splitlines()[-lines:]) or "(no output)"


@contextmanager
def running_service(
    publish_root: Path,
    conf: Path | None = None,
    host: str = "127.0.0.1",
    port: int | None = None,
    timeout_s: float = HEALTH_TIMEOUT_S,
) -> Iterator[str]:
    """Run ``python -m serving`` until the block ends; yields its base URL once /health is 200.

    Raises:
        ServiceError: the process exited, or /health was not 200 within ``timeout_s``; the
            message ends with the tail of the service's output.
    """
    port = port or free_port(host)
    command = [sys.executable, "-m", "serving", "--publish-root", str(publish_root.resolve())]
    command += ["--host", host, "--port", str(port)]
    if conf is not None:
        command += ["--conf", str(conf.resolve())]
    base_url = f"http://{host}:{port}"
    with tempfile.TemporaryFile() as log:  # a file, not a pipe: a chatty child never blocks
        logger.info("starting %s", " ".join(command))
        process = subprocess.Popen(command, cwd=PROJECT_ROOT, stdout=log, stderr=subprocess.STDOUT)
        try:
            _wait_for_health(process, base_url, timeout_s, log)
            yield base_url
        finally:
            _stop(process)


def _is_stale(response: httpx.Response) -> bool:
    try:
        return response.status_code == 503 and response.json().get("status") == "stale"
    except ValueError:
        return False


def _wait_for_health(
    process: subprocess.Popen[bytes], base_url: str, timeout_s: float, log: IO[bytes]
) -> None:
    deadline = time.monotonic() + timeout_s
    last_problem = "no answer yet"
    with httpx.Client(base_url=base_url, timeout=2.0) as client:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise ServiceError(
                    f"service exited with code {process.returncode} before it was healthy; "
                    f"its output ends with:\n{_tail(log)}"
                )
            try:
                response = client.get("/health")
            except httpx.TransportError as exc:
                last_problem = f"{type(exc).__name__}: {exc}"
            else:
                if response.status_code == 200 or _is_stale(response):
                    return  # stale: up and answering, only its version is old (a warning)
                last_problem = f"/health answered {response.status_code} {response.text}"
            time.sleep(POLL_INTERVAL_S)
    raise ServiceError(
        f"service at {base_url} not healthy after {timeout_s:.0f} s ({last_problem}); "
        f"its output ends with:\n{_tail(log)}"
    )


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            logger.warning(
                "service pid %d ignored SIGTERM for %.0f s; killing it", process.pid, STOP_TIMEOUT_S
            )
            process.kill()
            process.wait()


def pick_item(
    publish_root: Path, version: str, item_id: str | None = None
) -> tuple[str, str | None]:
    """(item_id, market) in ``version``: ``item_id`` if given, else the item with most events.

    Ties on ``n_events`` go to the smallest id; without an ``n_events`` column, the smallest id.
    """
    vectors_path = publish_root / VERSIONS / version / VECTORS_FILE
    try:
        dataset = ds.dataset(vectors_path, format="parquet")
        columns = [c for c in ("item_id", "market", "n_events") if c in dataset.schema.names]
        items = dataset.to_table(columns=columns)
    except (OSError, pa.ArrowException) as exc:
        raise EmbeddingError(f"{vectors_path}: cannot read the items to probe ({exc})") from exc
    if item_id is not None:
        items = items.filter(pc.equal(items["item_id"], item_id))
        market = items["market"][0].as_py() if items.num_rows and "market" in columns else None
        return item_id, market
    if items.num_rows == 0:
        raise EmbeddingError(f"{vectors_path}: holds no items to probe")
    order = [("item_id", "ascending")]
    if "n_events" in columns:
        order.insert(0, ("n_events", "descending"))
    best = items.take(pc.sort_indices(items, sort_keys=order)[:1]).to_pylist()[0]
    return best["item_id"], best.get("market")


def format_table(answer: dict[str, Any], query_market: str | None) -> str:
    """The service's answer as lines a person can read at a glance."""
    neighbors = answer["neighbors"]
    id_width = max([len("item_id"), *(len(n["item_id"]) for n in neighbors)])
    market_width = max([len("market"), *(len(n["market"] or "-") for n in neighbors)])
    lines = [
        f"version  {answer['version']}",
        f"query    {answer['item_id']}  (market {query_market or '-'})",
        "",
        f"{'rank':>4}  {'item_id':<{id_width}}  {'market':<{market_width}}  {'score':>7}",
    ]
    for rank, n in enumerate(neighbors, start=1):
        lines.append(
            f"{rank:>4}  {n['item_id']:<{id_width}}  {n['market'] or '-':<{market_width}}  "
            f"{n['score']:>7.4f}"
        )
    return "\n".join(lines)


def probe(
    publish_root: Path,
    conf: Path | None = None,
    item_id: str | None = None,
    k: int = 5,
    timeout_s: float = HEALTH_TIMEOUT_S,
) -> str:
    """Start the service, look up one item's neighbours over HTTP, return the printed table.

    The item is picked from the version the service reports in /health (it verified that
    version's files at startup), not from whatever CURRENT says by then.

    Raises:
        NoCurrentVersionError: nothing is published: checked first, as the service would only
            answer 503 until the timeout.
        ServiceError: the service failed to start or answered with an error.
    """
    read_current(publish_root)
    with (
        running_service(publish_root, conf=conf, timeout_s=timeout_s) as base_url,
        httpx.Client(base_url=base_url, timeout=10.0) as client,
    ):
        version = client.get("/health").json()["version"]
        query_id, query_market = pick_item(publish_root, version, item_id)
        response = client.get(f"/items/{quote(query_id, safe='')}/similar", params={"k": k})
    if response.status_code != 200:
        raise ServiceError(
            f"GET {response.request.url} answered {response.status_code}: {response.text}"
        )
    return format_table(response.json(), query_market)


def fail(message: str) -> None:
    """The CLI's one stderr line for an error the user can fix."""
    sys.stderr.write(f"error: {message}\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m serving.probe",
        description="Start the service, show one item's neighbours over HTTP, stop it.",
    )
    parser.add_argument("--publish-root", type=Path, required=True)
    parser.add_argument("--conf", type=Path, default=None, help="passed on to python -m serving")
    parser.add_argument(
        "--item", default=None, help="item id (default: most events in the served version)"
    )
    parser.add_argument("--k", type=int, default=5, help="neighbours to show (default 5)")
    parser.add_argument("--timeout-s", type=float, default=HEALTH_TIMEOUT_S)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    if args.k < 1:
        fail(f"--k must be at least 1, got {args.k}")
        return 2
    if not args.publish_root.is_dir():
        fail(f"publish root {args.publish_root} does not exist")
        return 2
    try:
        table = probe(args.publish_root, args.conf, args.item, args.k, args.timeout_s)
    except ServiceError as exc:
        fail(str(exc))
        return 1
    except EmbeddingError as exc:  # nothing published, unreadable vectors
        fail(str(exc))
        return 2
    sys.stdout.write(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
