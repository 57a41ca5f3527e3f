"""``python -m serving --publish-root DIR``: serve CURRENT's item vectors over HTTP (uvicorn).

Exit codes: 2 when the publish root or the config is unusable (one line on stderr); otherwise
uvicorn's (3 when the app fails to start, e.g. the version named by CURRENT fails its checks).
"""

import argparse
import ipaddress
import logging
import os
import sys
from pathlib import Path

from embedding import PROJECT_ROOT
from embedding.core.errors import EmbeddingError

DEFAULT_CONF = PROJECT_ROOT / "conf" / "default.yaml"
# request line + headers: longer is a 400 from the server; every URL the spec allows fits
# (serving.routes.neighbors.MAX_QUERY_IDS)
MAX_REQUEST_HEAD_BYTES = 256 * 1024


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m serving", description="Serve item neighbours from a publish root."
    )
    parser.add_argument("--publish-root", type=Path, required=True, help="folder holding CURRENT")
    parser.add_argument(
        "--conf",
        type=Path,
        default=None,
        help=f"config file (default: {DEFAULT_CONF} if present, else built-in defaults)",
    )
    parser.add_argument("--host", default=None, help="bind address (default: serving.host)")
    parser.add_argument("--port", type=int, default=None, help="port (default: serving.port)")
    parser.add_argument(
        "--blocklist",
        type=Path,
        default=None,
        help="item ids never returned, one per line (default: serving.blocklist_path); "
        "reread whenever it changes",
    )
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning"])
    return parser.parse_args(argv)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def fail(message: str) -> None:
    """The CLI's one stderr line for an error the user can fix."""
    sys.stderr.write(f"error: {message}\n")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if not args.publish_root.is_dir():
        fail(
            f"publish root {args.publish_root} does not exist; "
            "pass the folder the pipeline publishes to"
        )
        return 2

    # heavier imports only once the arguments are fine
    from embedding.core.config import load_config

    conf = (
        args.conf if args.conf is not None else (DEFAULT_CONF if DEFAULT_CONF.is_file() else None)
    )
    try:
        serving_cfg = load_config(conf).serving
    except EmbeddingError as exc:
        fail(str(exc))
        return 2
    if args.blocklist is not None:
        serving_cfg = serving_cfg.model_copy(
            update={"blocklist_path": str(args.blocklist.resolve())}
        )
    host = args.host or serving_cfg.host
    port = args.port if args.port is not None else serving_cfg.port
    if not 0 < port < 65536:
        fail(f"--port {port} is not a TCP port (1-65535)")
        return 2
    if not is_loopback(host) and not os.environ.get(serving_cfg.admin_token_env):
        fail(
            f"--host {host} is reachable from other machines, and ${serving_cfg.admin_token_env} "
            "is not set: admin routes would trust any client; set a token or bind 127.0.0.1"
        )
        return 2

    import uvicorn

    from serving.app import create_app

    app = create_app(args.publish_root.resolve(), serving_cfg)
    # proxy_headers off: the client address is the peer's, never a header's (serving.routes.admin)
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level=args.log_level,
        log_config=None,
        proxy_headers=False,
        h11_max_incomplete_event_size=MAX_REQUEST_HEAD_BYTES,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
