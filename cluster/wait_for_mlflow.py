"""Wait, a bounded time, for the MLflow server that `ray up` just started on the head node, so
that `ray up` returns only when `ray submit` can use it; fail with the server's log otherwise.

    python3 cluster/wait_for_mlflow.py --url http://127.0.0.1:5000 --timeout 180 --log ~/mlflow/server.log
"""
import argparse
import sys
import time
import urllib.request
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--url", default="http://127.0.0.1:5000")
    ap.add_argument("--timeout", type=float, default=180.0)
    ap.add_argument("--log", default="~/mlflow/server.log")
    args = ap.parse_args()
    deadline = time.monotonic() + args.timeout
    t0 = time.monotonic()
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(args.url.rstrip("/") + "/api/2.0/mlflow/experiments/search?max_results=1",
                                        timeout=5) as r:
                if r.status < 400:
                    print(f"MLflow server answers at {args.url} ({time.monotonic() - t0:.0f} s)")
                    return 0
        except OSError:
            pass
        time.sleep(2)
    log = Path(args.log).expanduser()
    tail = log.read_text(errors="replace").splitlines()[-20:] if log.is_file() else ["(no log written)"]
    print(f"MLflow server at {args.url} did not answer within {args.timeout:.0f} s; its log, {log}, ends:", file=sys.stderr)
    print("\n".join(tail), file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
