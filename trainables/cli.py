"""Shared command-line plumbing: one clear line and a non-zero exit for bad input."""

from __future__ import annotations

import argparse
import gc
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from .errors import ConfigError, DivergedError

EXIT_BAD_INPUT = 2
EXIT_DIVERGED = 3


def run_main(fn: Callable[[], int | None]) -> None:
    """Run ``fn``; a ConfigError (bad name, value, path or checkpoint) is one line on stderr
    and exit code 2, a diverged training run exit code 3, never a traceback."""
    try:
        code = fn()
    except ConfigError as e:
        print(f"error: {one_line(str(e))}", file=sys.stderr)
        code = EXIT_BAD_INPUT
    except DivergedError as e:
        print(f"error: {e}", file=sys.stderr)
        code = EXIT_DIVERGED
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        code = 130
    exit_now(code or 0)


def exit_now(code: int) -> NoReturn:
    """``sys.exit(code)`` without the interpreter's last garbage collection: at exit it walks every
    object the command imported (torch, Ray, MLflow, Optuna, matplotlib), about 1.5 CPU-s after a
    sweep on a 2-core Xeon. Frozen, they are not walked; the process's memory goes back to the
    system as it ends. atexit handlers still run and the standard streams are still flushed. Not
    once Triton is loaded (torch's compiler imports it; a sweep's driver does not): its bindings
    (nanobind) print every object of theirs left at exit as a leak."""
    if "triton" not in sys.modules:
        gc.freeze()
    sys.exit(code)


class Parser(argparse.ArgumentParser):
    """argparse with whole option names only (``--smok`` is not ``--smoke-test``) and a usage
    error as one line, like every other bad input."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["allow_abbrev"] = False
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        print(f"error: {one_line(message)} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)


MAX_MESSAGE = 600  # an error line quotes what it refused; a huge value must not make a huge line


def one_line(text: str, limit: int = MAX_MESSAGE) -> str:
    """``text`` on one line, at most ``limit`` characters (the rest elided, its length said)."""
    text = " ".join(text.split())
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text) - limit} more characters)"


def writable_dir(path: str | os.PathLike, what: str = "--output-dir", private: bool = False) -> Path:
    """Create ``path`` if needed and check that files can be written there. A directory created
    ``private`` is readable by its owner only (results, checkpoints and the MLflow database)."""
    import tempfile

    p = Path(path).expanduser().resolve()
    try:
        created = not p.exists()
        p.mkdir(parents=True, exist_ok=True)
        if created and private:
            p.chmod(0o700)
        with tempfile.TemporaryFile(dir=p):
            pass
    except OSError as e:
        raise ConfigError(f"{what} {p}: not writable ({e.strerror or e})") from None
    return p
