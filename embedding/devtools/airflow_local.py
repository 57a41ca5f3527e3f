"""Airflow 3 on this machine, bound to 127.0.0.1: the UI for people (``make airflow``) and the
scheduler for tests.

Why: in Airflow 3, ``dag.test()`` runs one DAG run in-process, but backfills
(``airflow backfill create``) and Asset-triggered runs are carried out by the scheduler, whose
LocalExecutor runs each task in a process of its own that talks to the api-server's Execution
API. Exercising them needs the real components: ``airflow api-server``, ``airflow scheduler``
and ``airflow dag-processor`` (which parses the DAG files into the metadata DB).

``LocalAirflow`` migrates a SQLite metadata DB in its own ``AIRFLOW_HOME``, starts the three
components as subprocesses (each in its own process group, output in ``<home>/<name>.log``),
waits until the api-server reports them healthy, and on exit stops them and every process they
started (SIGTERM, then SIGKILL after a timeout). A component that dies raises
``AirflowComponentError`` with the tail of its log. Logging in: SimpleAuthManager with one user,
``admin``, whose password the api-server generates into
``<home>/simple_auth_manager_passwords.json.generated`` on its first start.

    with LocalAirflow(tmp_path / "airflow", port=free_port()) as airflow:
        airflow.wait_for_dag("item_embeddings")
        airflow.cli("dags", "unpause", "item_embeddings")
        airflow.cli("backfill", "create", "--dag-id", "item_embeddings", ...)
        states = airflow.wait_for_runs("item_embeddings", expected=3)

``python -m embedding.devtools.airflow_local [--port 8080] [--home .airflow]`` runs the
components in
the foreground with the project's DAGs until Ctrl-C, and prints the URL and how to log in.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

from embedding import PROJECT_ROOT
from embedding.devtools.airflow_env import (
    ADMIN,
    HOST,
    LOG_TAIL_LINES,
    PASSWORDS_FILE,
    airflow_command,
    airflow_env,
    log_tail,
    port_in_use,
    stop_process_tree,
)

DEFAULT_PORT = 8080
COMPONENTS = ("api-server", "scheduler", "dag-processor")
# the scheduler's log server would listen on every interface (port 8793); the api-server reads
# task logs from the local files, so it is not needed on one machine
COMPONENT_ARGS = {"scheduler": ("--skip-serve-logs",)}
UNFINISHED = frozenset({"queued", "running"})


class AirflowComponentError(RuntimeError):
    """A component or CLI call failed; the message names it and ends with its output."""


class LocalAirflow:
    """api-server, scheduler and dag-processor on 127.0.0.1:``port`` for the DAGs in
    ``dags_folder``, with metadata DB, logs and passwords in ``home``. A context manager:
    started on enter, every process stopped on exit."""

    def __init__(
        self,
        home: Path,
        port: int = DEFAULT_PORT,
        dags_folder: Path = PROJECT_ROOT / "dags",
        extra: dict[str, str] | None = None,
        components: Iterable[str] = COMPONENTS,
        start_timeout_s: float = 240.0,
        stop_timeout_s: float = 30.0,
    ) -> None:
        self.home = Path(home).resolve()
        self.port = port
        self.base_url = f"http://{HOST}:{port}"
        self.env = airflow_env(self.home, port, dags_folder, extra)
        self.components = tuple(components)
        self.start_timeout_s = start_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.processes: dict[str, subprocess.Popen] = {}
        self._logs: dict[str, IO[bytes]] = {}
        self._token: str | None = None

    def __enter__(self) -> LocalAirflow:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Migrate the DB, start each component, wait until the api-server says they are up."""
        if port_in_use(self.port):
            raise AirflowComponentError(
                f"{HOST}:{self.port} is already in use: stop what listens there or pick "
                "another port"
            )
        self.home.mkdir(parents=True, exist_ok=True)
        self.cli("db", "migrate", timeout_s=self.start_timeout_s)
        for name in self.components:
            self._spawn(name)
        self.wait_until_healthy()

    def log_path(self, name: str) -> Path:
        return self.home / f"{name}.log"

    def _spawn(self, name: str) -> None:
        log = self._logs[name] = open(self.log_path(name), "ab")  # closed in stop()
        self.processes[name] = subprocess.Popen(
            airflow_command(name, *COMPONENT_ARGS.get(name, ())),
            env=self.env,
            cwd=PROJECT_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stopped as a whole, not by Ctrl-C
        )

    def check_alive(self) -> None:
        """Raise AirflowComponentError, with the tail of its log, if a component has exited."""
        for name, process in self.processes.items():
            code = process.poll()
            if code is not None:
                raise AirflowComponentError(
                    f"airflow {name} (pid {process.pid}) exited with {code}; the last lines of "
                    f"{self.log_path(name)}:\n{log_tail(self.log_path(name))}"
                )

    def health(self) -> dict[str, Any] | None:
        """GET /api/v2/monitor/health (no login needed), or None while the API does not answer."""
        try:
            with urllib.request.urlopen(f"{self.base_url}/api/v2/monitor/health", timeout=5) as r:
                return json.loads(r.read())
        except (OSError, ValueError):
            return None

    def wait_until_healthy(self) -> None:
        """Until the api-server answers and reports the DB and each started component healthy."""
        wanted = ["metadatabase"] + [
            n.replace("-", "_") for n in self.components if n in ("scheduler", "dag-processor")
        ]
        deadline = time.monotonic() + self.start_timeout_s
        health: dict[str, Any] | None = None
        while time.monotonic() < deadline:
            self.check_alive()
            health = self.health()
            if health and all((health.get(k) or {}).get("status") == "healthy" for k in wanted):
                return
            time.sleep(1)
        raise AirflowComponentError(
            f"Airflow on {self.base_url} not healthy after {self.start_timeout_s:.0f} s "
            f"(health: {health}); the last lines of {self.log_path('api-server')}:\n"
            f"{log_tail(self.log_path('api-server'))}"
        )

    def stop(self) -> None:
        """Stop every component and whatever it started: scheduler first (it stops its task
        processes), api-server last (running tasks report to it)."""
        order = ["scheduler", "dag-processor", "triggerer", "api-server"]
        names = sorted(self.processes, key=lambda n: order.index(n) if n in order else 0)
        for name in names:
            stop_process_tree(self.processes[name], self.stop_timeout_s)
        self.processes.clear()
        for log in self._logs.values():
            log.close()
        self._logs.clear()

    # -- the CLI and the REST API ----------------------------------------------------------

    def cli(self, *args: str, check: bool = True, timeout_s: float = 300.0):
        """Run ``airflow <args>`` against this Airflow; the CompletedProcess (text output).

        Raises:
            AirflowComponentError: it exited non-zero (with ``check``), naming the command and
                ending with its output.
        """
        result = subprocess.run(
            airflow_command(*args),
            env=self.env,
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
        if check and result.returncode != 0:
            output = "\n".join((result.stdout + result.stderr).splitlines()[-LOG_TAIL_LINES:])
            raise AirflowComponentError(
                f"airflow {' '.join(args)} exited with {result.returncode}:\n{output}"
            )
        return result

    def admin_password(self) -> str:
        """The generated password of ``admin`` (the api-server writes it on its first start)."""
        path = self.home / PASSWORDS_FILE
        try:
            return json.loads(path.read_text())[ADMIN]
        except (OSError, ValueError, KeyError) as exc:
            raise AirflowComponentError(f"no password for {ADMIN!r} in {path}: {exc}") from exc

    def token(self) -> str:
        """A JWT for the REST API: POST /auth/token as ``admin``."""
        if self._token is None:
            body = {"username": ADMIN, "password": self.admin_password()}
            self._token = self._request("POST", "/auth/token", body, auth=False)["access_token"]
        return self._token

    def api(self, method: str, path: str, body: dict | None = None) -> Any:
        """Call the REST API as ``admin`` (``path`` from the root, e.g. ``/api/v2/dags``)."""
        return self._request(method, path, body, auth=True)

    def _request(self, method: str, path: str, body: dict | None, auth: bool) -> Any:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if auth:
            headers["Authorization"] = f"Bearer {self.token()}"
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.base_url + path, data=data, headers=headers, method=method
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                payload = response.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")[:500]
            raise AirflowComponentError(f"{method} {path}: HTTP {exc.code}: {detail}") from exc
        return json.loads(payload) if payload else None

    # -- waiting on DAGs and runs ----------------------------------------------------------

    def wait_for_dag(self, dag_id: str, timeout_s: float = 180.0) -> dict:
        """Until the dag-processor has parsed ``dag_id`` into the DB; its REST record.

        Polls the REST API, not ``airflow dags list``: each CLI call starts a full interpreter
        (seconds of CPU). Raises with the import errors if the DAG does not show up.
        """
        deadline = time.monotonic() + timeout_s
        last = None
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                return self.api("GET", f"/api/v2/dags/{dag_id}")
            except AirflowComponentError as exc:  # 404 until parsed; a 5xx while it is written
                last = exc
            time.sleep(1)
        errors = self.api("GET", "/api/v2/importErrors").get("import_errors", [])
        raise AirflowComponentError(
            f"DAG {dag_id} not parsed after {timeout_s:.0f} s (last answer: {last}); import "
            f"errors: {errors}; the last "
            f"lines of {self.log_path('dag-processor')}:\n"
            f"{log_tail(self.log_path('dag-processor'))}"
        )

    def runs(self, dag_id: str) -> list[dict]:
        """The DAG's runs (REST records), oldest logical date first."""
        found = self.api("GET", f"/api/v2/dags/{dag_id}/dagRuns?limit=100")["dag_runs"]
        return sorted(found, key=lambda r: (r.get("logical_date") or "", r["dag_run_id"]))

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str | None]:
        """{task_id: state} of one run."""
        run = urllib.parse.quote(run_id, safe="")
        path = f"/api/v2/dags/{dag_id}/dagRuns/{run}/taskInstances?limit=100"
        return {t["task_id"]: t["state"] for t in self.api("GET", path)["task_instances"]}

    def task_log_tail(self, dag_id: str, run_id: str, task_id: str) -> str:
        """The tail of the latest attempt's log of one task (files under ``<home>/logs``)."""
        folder = self.home / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}" / f"task_id={task_id}"
        attempts = sorted(folder.glob("attempt=*.log"))
        return log_tail(attempts[-1]) if attempts else f"(no log under {folder})"

    def wait_for_runs(
        self, dag_id: str, expected: int = 1, timeout_s: float = 900.0, poll_s: float = 2.0
    ) -> dict[str, str]:
        """Until ``dag_id`` has at least ``expected`` runs and none is queued or running;
        {logical date (or run id): state}, oldest first.

        Raises:
            AirflowComponentError: a component died, or the runs were not done in time (with
                their states and the scheduler's log).
        """
        deadline = time.monotonic() + timeout_s
        states: dict[str, str] = {}
        while time.monotonic() < deadline:
            self.check_alive()
            runs = self.runs(dag_id)
            states = {(r.get("logical_date") or r["dag_run_id"]): r["state"] for r in runs}
            if len(runs) >= expected and not UNFINISHED & set(states.values()):
                return states
            time.sleep(poll_s)
        raise AirflowComponentError(
            f"runs of {dag_id} not finished after {timeout_s:.0f} s: {states}; the last lines "
            f"of {self.log_path('scheduler')}:\n{log_tail(self.log_path('scheduler'))}"
        )


def _say(text: str, stream: IO[str] | None = None) -> None:
    """One message for the person at the terminal (this module's only console output)."""
    stream = stream or sys.stdout
    stream.write(text + "\n")
    stream.flush()


def main(argv: list[str] | None = None) -> int:
    """Run Airflow with the project's DAGs in the foreground until Ctrl-C (``make airflow``)."""
    parser = argparse.ArgumentParser(
        prog="python -m embedding.devtools.airflow_local",
        description="Airflow 3 (api-server, scheduler, dag-processor) on 127.0.0.1 with the "
        "project's DAGs, until Ctrl-C.",
    )
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument(
        "--home",
        type=Path,
        default=Path(os.environ.get("AIRFLOW_HOME") or PROJECT_ROOT / ".airflow"),
        help="AIRFLOW_HOME: metadata DB, logs, passwords (default: $AIRFLOW_HOME or ./.airflow)",
    )
    args = parser.parse_args(argv)
    # SIGTERM (kill, make interrupted) stops the components too, as Ctrl-C does
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    _say(f"== starting Airflow in {args.home.resolve()} (logs: <home>/<component>.log)")
    try:
        with LocalAirflow(args.home, port=args.port) as airflow:
            _say(
                f"== Airflow is up: {airflow.base_url}/\n"
                f"   log in as {ADMIN}, password {airflow.admin_password()}\n"
                f"   (stored in {airflow.home / PASSWORDS_FILE}); Ctrl-C stops it"
            )
            while True:
                airflow.check_alive()
                time.sleep(2)
    except KeyboardInterrupt:
        _say("\n== stopped")
    except AirflowComponentError as exc:
        _say(f"error: {exc}", sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
