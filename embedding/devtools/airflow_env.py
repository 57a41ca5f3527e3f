"""The local Airflow's environment and processes: its home's secrets, the environment the
components run with, free ports, log tails, and stopping a component's process tree.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
from pathlib import Path

from embedding import PROJECT_ROOT

HOST = "127.0.0.1"
ADMIN = "admin"
SIMPLE_AUTH_MANAGER = (
    "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
)
PASSWORDS_FILE = "simple_auth_manager_passwords.json.generated"
SECRETS_FILE = "local_secrets.json"  # the JWT secret and API secret key shared by the components
LOG_TAIL_LINES = 30
# DAG files are listed and re-parsed every this many seconds (Airflow's defaults: 300 and 30),
# so an edited DAG shows up quickly; parsing one small file this often costs little
REFRESH_S = 10


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1)
        return sock.connect_ex((HOST, port)) == 0


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of a log file ('(no output)' when empty or missing)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no output)"
    return "\n".join(text.splitlines()[-lines:]) or "(no output)"


def home_secrets(home: Path) -> dict[str, str]:
    """The JWT secret and API secret key of ``home``: random, generated once, stored in
    ``<home>/local_secrets.json`` (mode 0600). Every component must sign and check task and
    UI tokens with the same secret, so it cannot be left to each process's own random default."""
    path = home / SECRETS_FILE
    if not path.is_file():
        home.mkdir(parents=True, exist_ok=True)
        values = {"jwt_secret": secrets.token_urlsafe(32), "secret_key": secrets.token_urlsafe(32)}
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # written by a concurrent caller: read theirs
            pass
        else:
            with os.fdopen(fd, "w") as out:
                json.dump(values, out)
    return json.loads(path.read_text())


def airflow_env(
    home: Path, port: int, dags_folder: Path, extra: dict[str, str] | None = None
) -> dict[str, str]:
    """The environment of every component and CLI call for the Airflow in ``home``.

    Starts from this process's environment minus every ``AIRFLOW_*`` variable, so a caller's
    own Airflow settings (a test's throwaway home, a shell's DB URL) never leak in; ``extra``
    is applied last. SQLite DB and logs in ``home``, LocalExecutor, examples off, the API on
    127.0.0.1:``port`` with the Execution API on the same server, SimpleAuthManager with the
    user ``admin``, DAG files re-parsed every ``REFRESH_S`` seconds, Spark bound to 127.0.0.1,
    a fixed hash seed (reproducible training), the project importable.
    """
    home = Path(home).resolve()
    shared = home_secrets(home)
    base_url = f"http://{HOST}:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW_")}
    python_path = [str(PROJECT_ROOT), *filter(None, [env.get("PYTHONPATH")])]
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__DAGS_FOLDER": str(Path(dags_folder).resolve()),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{base_url}/execution/",
            "AIRFLOW__CORE__AUTH_MANAGER": SIMPLE_AUTH_MANAGER,
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{ADMIN}:admin",  # user:role
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / PASSWORDS_FILE),
            "AIRFLOW__API__HOST": HOST,
            "AIRFLOW__API__PORT": str(port),
            "AIRFLOW__API__BASE_URL": f"{base_url}/",
            "AIRFLOW__API__SECRET_KEY": shared["secret_key"],
            "AIRFLOW__API_AUTH__JWT_SECRET": shared["jwt_secret"],
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": str(REFRESH_S),
            "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": str(REFRESH_S),
            "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
            "AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_STORAGE_PATH": str(home / "dag_bundles"),
            "SPARK_LOCAL_IP": HOST,
            "PYTHONHASHSEED": "0",
            "PYTHONPATH": os.pathsep.join(python_path),
        }
    )
    env.update(extra or {})
    return env


def airflow_command(*args: str) -> list[str]:
    """``airflow <args>`` with this interpreter (no reliance on PATH)."""
    return [sys.executable, "-m", "airflow", *args]


def stop_process_tree(process: subprocess.Popen, timeout_s: float) -> None:
    """SIGTERM ``process``'s group, SIGKILL whatever of it and its descendants is left after
    ``timeout_s``. Descendants are listed first: task processes run in process groups of
    their own, so signalling the group alone could miss them."""
    import psutil  # an Airflow dependency

    try:
        tree = [psutil.Process(process.pid), *psutil.Process(process.pid).children(True)]
    except psutil.NoSuchProcess:
        tree = []
    _signal_group(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        pass
    _signal_group(process.pid, signal.SIGKILL)  # stragglers of the group, if any
    _, alive = psutil.wait_procs(tree, timeout=0.5)
    for leftover in alive:
        try:
            leftover.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=5)
    if process.poll() is None:
        process.wait(timeout=5)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass
