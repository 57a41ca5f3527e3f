"""A real Spark standalone cluster (one master, one worker) on 127.0.0.1, for runs and tests.

pip's pyspark ships ``bin/spark-class`` (not the sbin scripts), so the master and the worker
are started as plain processes; their pids and URLs go to ``<state_dir>/cluster.json``.

    python -m jobs.cluster up [--port 7077] [--cores 2] [--memory 2g]   # make spark-up
    python -m jobs.cluster down                                         # make spark-down
    python -m jobs.sessionize --set spark.master=spark://127.0.0.1:7077 --input ... --work-dir ...
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from embedding import PROJECT_ROOT

logger = logging.getLogger(__name__)

STATE_DIR = PROJECT_ROOT / ".spark"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def spark_bin(name: str) -> Path:
    import pyspark

    return Path(pyspark.__file__).parent / "bin" / name


@dataclass
class Cluster:
    master_url: str
    webui_url: str
    pids: list[int]
    log_dir: str

    def alive_workers(self) -> int:
        try:
            with urllib.request.urlopen(f"{self.webui_url}/json/", timeout=2) as response:
                state = json.load(response)
        except OSError:
            return 0
        return sum(1 for w in state.get("workers", []) if w.get("state") == "ALIVE")

    def stop(self) -> None:
        for pid in self.pids:
            try:
                os.killpg(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
        for pid in self.pids:
            for _ in range(50):
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.2)
            else:
                os.killpg(pid, signal.SIGKILL)


def _env() -> dict[str, str]:
    env = dict(os.environ, SPARK_LOCAL_IP="127.0.0.1", SPARK_NO_DAEMONIZE="1")
    env.setdefault("PYSPARK_PYTHON", sys.executable)
    return env


def start_cluster(
    log_dir: Path,
    port: int | None = None,
    cores: int = 2,
    memory: str = "2g",
    timeout_s: float = 90,
) -> Cluster:
    """Start a master and a worker on loopback and wait until the worker has registered."""
    log_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    webui, worker_ui = free_port(), free_port()
    master_url = f"spark://127.0.0.1:{port}"
    commands = {
        "master": [
            str(spark_bin("spark-class")), "org.apache.spark.deploy.master.Master",
            "--host", "127.0.0.1", "--port", str(port), "--webui-port", str(webui),
        ],
        "worker": [
            str(spark_bin("spark-class")), "org.apache.spark.deploy.worker.Worker",
            "--host", "127.0.0.1", "--cores", str(cores), "--memory", memory,
            "--webui-port", str(worker_ui), master_url,
        ],
    }  # fmt: skip
    pids = []
    for name, command in commands.items():
        with (log_dir / f"{name}.log").open("wb") as log:
            proc = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=_env(), start_new_session=True
            )
        pids.append(proc.pid)
        if name == "master":
            time.sleep(1)
    cluster = Cluster(master_url, f"http://127.0.0.1:{webui}", pids, str(log_dir))
    deadline = time.monotonic() + timeout_s
    while cluster.alive_workers() < 1:
        if time.monotonic() > deadline:
            cluster.stop()
            raise RuntimeError(f"no Spark worker registered with {master_url}; see {log_dir}")
        time.sleep(0.5)
    logger.info("Spark standalone cluster up: %s (UI %s)", master_url, cluster.webui_url)
    return cluster


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="start or stop a local standalone Spark cluster")
    parser.add_argument("action", choices=["up", "down", "status"])
    parser.add_argument("--port", type=int, default=7077)
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--memory", default="2g")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    state = STATE_DIR / "cluster.json"
    if args.action == "up":
        if state.is_file():
            print(f"already up: {json.loads(state.read_text())['master_url']}")  # noqa: T201
            return 0
        cluster = start_cluster(STATE_DIR / "logs", args.port, args.cores, args.memory)
        state.write_text(json.dumps(asdict(cluster)))
        print(f"master {cluster.master_url}  UI {cluster.webui_url}")  # noqa: T201
    elif args.action == "down":
        if state.is_file():
            Cluster(**json.loads(state.read_text())).stop()
            state.unlink()
        print("cluster down")  # noqa: T201
    else:
        up = state.is_file() and Cluster(**json.loads(state.read_text())).alive_workers() > 0
        print("up" if up else "down")  # noqa: T201
    return 0


if __name__ == "__main__":
    sys.exit(main())
