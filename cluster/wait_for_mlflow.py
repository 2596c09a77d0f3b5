"""Wait, a bounded time, for the MLflow server that `ray up` just started on the head node, so
that `ray up` returns only when `ray submit` can use it; fail with the server's log otherwise.

    python3 cluster/wait_for_mlflow.py --url http://127.0.0.1:5000 --timeout 180 --log ~/mlflow/server.log

The probe is the sweep's own (``orchestrator.cluster.mlflow_server``): the project is installed on
the head before this runs.
"""

import argparse
import sys
import time
from pathlib import Path

from orchestrator.cluster.mlflow_server import wait_for_server


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--url", default="http://127.0.0.1:5000")
    ap.add_argument("--timeout", type=float, default=180.0)
    ap.add_argument("--log", default="~/mlflow/server.log")
    args = ap.parse_args()
    t0 = time.monotonic()
    try:
        wait_for_server(args.url, args.timeout)
    except Exception as e:  # noqa: BLE001 - whatever it was, the server is not usable: show its log
        log = Path(args.log).expanduser()
        tail = log.read_text(errors="replace").splitlines()[-20:] if log.is_file() else ["(no log written)"]
        print(
            f"MLflow server at {args.url} did not answer within {args.timeout:.0f} s "
            f"({type(e).__name__}: {str(e)[:200]}); its log, {log}, ends:",
            file=sys.stderr,
        )
        print("\n".join(tail), file=sys.stderr)
        return 1
    print(f"MLflow server answers at {args.url} ({time.monotonic() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
