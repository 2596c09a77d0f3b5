"""The one probe of an MLflow tracking store, used by the sweep before Ray starts
(``check_tracking_uri``), by the head's start commands after ``ray up`` starts the server
(``cluster/wait_for_mlflow.py``) and by the launcher check (``cluster/loopback_check.py``).

A server counts as up only when it answers a real MLflow API call with an experiments list: a
port that answers ``/health`` but is not MLflow is refused. A server that refuses connections is
still starting and is waited for, a bounded time; any other failure is final at once."""

from __future__ import annotations

import json
import os
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from trainables.errors import ConfigError

SERVER_WAIT_S = 60.0  # how long the sweep waits for a tracking server that is still starting
POLL_S = 2.0  # between two probes of a server that is still starting


def default_tracking_uri(output_dir: Path) -> str:
    return f"sqlite:///{(output_dir / 'mlflow.db').resolve()}"


def normalize_uri(uri: str) -> str:
    """Absolute SQLite paths (Ray trials change directory); servers as given."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        rel = uri[len("sqlite:///") :]
        return f"sqlite:///{Path(rel).expanduser().resolve()}"
    if "://" not in uri or (uri.startswith("sqlite:") and not uri.startswith("sqlite:///")):
        raise ConfigError(f"--tracking-uri {uri!r}: expected sqlite:////ABS/PATH/mlflow.db or http(s)://HOST:PORT")
    return uri


def ask_server(uri: str, timeout: float = 5.0) -> None:
    """One real MLflow API call; raises when the server does not answer it as MLflow does."""
    url = uri.rstrip("/") + "/api/2.0/mlflow/experiments/search?max_results=1"
    with urllib.request.urlopen(url, timeout=timeout) as r:
        if r.status >= 400:
            raise OSError(f"HTTP {r.status}")
        body = json.loads(r.read(1 << 20) or b"{}")
    if not isinstance(body, dict) or not set(body) <= {"experiments", "next_page_token"}:
        raise ValueError("the answer is not an MLflow experiments list")


def refused(e: BaseException) -> bool:
    """Nothing listens yet (a server still starting), as opposed to an answer that is wrong."""
    reason = getattr(e, "reason", e)
    return isinstance(reason, ConnectionRefusedError) or isinstance(e, ConnectionRefusedError)


def wait_for_server(
    uri: str, wait_s: float, *, timeout: float = 5.0, poll_s: float = POLL_S, say: Callable[[str], None] | None = None
) -> None:
    """Return once the server at ``uri`` answers as MLflow. A server that refuses connections is
    probed again until ``wait_s`` has passed (saying so once through ``say``); the last failure,
    or any failure other than a refused connection, is raised."""
    deadline = time.monotonic() + wait_s
    waited = False
    while True:
        try:
            return ask_server(uri, timeout)
        except Exception as e:  # noqa: BLE001 - any failure means unusable
            if not (refused(e) and time.monotonic() < deadline):
                raise
            if say is not None and not waited:
                say(f"mlflow: {uri} refuses connections; waiting up to {wait_s:.0f} s for it to start")
            waited = True
            time.sleep(poll_s)


def answers(uri: str, timeout: float = 5.0) -> bool:
    """Whether the server at ``uri`` answers as MLflow now (no waiting)."""
    try:
        ask_server(uri, timeout)
    except Exception:  # noqa: BLE001
        return False
    return True


def _check_sqlite(uri: str) -> None:
    parent = Path(uri[len("sqlite:///") :]).parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"--tracking-uri {uri}: cannot create {parent} ({e.strerror})") from None
    if not os.access(parent, os.W_OK):
        raise ConfigError(f"--tracking-uri {uri}: {parent} is not writable")


def check_tracking_uri(
    uri: str, timeout: float = 5.0, wait_s: float = SERVER_WAIT_S, say: Callable[[str], None] = print
) -> None:
    """Fail before Ray starts when the store cannot be used. A server that refuses connections
    is waited for up to ``wait_s`` (``ray up`` may have just started it), saying so once."""
    if uri.startswith("sqlite:"):
        return _check_sqlite(uri)
    if uri.startswith("databricks"):
        return None
    if not uri.startswith(("http://", "https://")):
        raise ConfigError(f"--tracking-uri {uri}: unsupported scheme; expected sqlite:/// or http(s)://")
    try:
        wait_for_server(uri, wait_s, timeout=timeout, say=say)
    except Exception as e:  # noqa: BLE001 - any failure means unusable
        raise ConfigError(
            f"--tracking-uri {uri}: MLflow tracking server unreachable or not MLflow "
            f"({type(e).__name__}: {str(e)[:200]})"
        ) from None
    return None
