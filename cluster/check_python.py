"""Run first on every node by the cluster files' setup commands: the node's ``python3`` must be
the Python that ``cluster/constraints.txt`` was made with (its ``# Python: X.Y`` line). numpy 2.4
and pandas 3 need 3.11 or newer, so on an image with an older Python the pinned install fails
deep in pip's resolver; this says which Python the node has, in one line, before pip runs.

    python3 ~/sprout-orchestrator/cluster/check_python.py
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

CONSTRAINTS = Path(__file__).resolve().parent / "constraints.txt"


def required(constraints: Path = CONSTRAINTS) -> tuple[int, int]:
    """The Python ``X.Y`` that the constraints file names in its header."""
    m = re.search(r"^# Python: (\d+)\.(\d+)\b", constraints.read_text(), re.M)
    if m is None:
        raise SystemExit(f"{constraints}: no '# Python: X.Y' line in its header")
    return int(m.group(1)), int(m.group(2))


def check(version: tuple[int, int] = sys.version_info[:2], constraints: Path = CONSTRAINTS) -> str | None:
    """None when ``version`` is the one the constraints were made with, else the one-line error."""
    want = required(constraints)
    if tuple(version[:2]) == want:
        return None
    have = ".".join(map(str, version[:2]))
    return (
        f"this node's python3 is {have}; cluster/constraints.txt pins the packages the tests passed with on "
        f"Python {want[0]}.{want[1]}: give the node type an image with it (ImageId in the cluster file)"
    )


if __name__ == "__main__":
    error = check()
    if error:
        raise SystemExit(f"error: {error}")
    print(f"python3 {sys.version.split()[0]}: as cluster/constraints.txt expects")
