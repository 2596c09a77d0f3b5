"""Files the project writes: JSON written atomically (readers never see half a file); paths in a
study's storage, which may be an object store's URI."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def write_json(path: Path, data: Any) -> None:
    """Atomic JSON write: a uniquely named temporary file beside ``path``, then a rename, so a
    reader never sees half a file and two writers never share a temporary name."""
    import tempfile

    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(data, indent=2, sort_keys=False, default=_jsonable))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _jsonable(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, (set, tuple)):
        return list(o)
    if isinstance(o, Path):
        return str(o)
    return str(o)


# ----------------------------------------------------------------------------- storage URIs
def is_uri(path: str | os.PathLike) -> bool:
    """``s3://bucket/path?endpoint_override=...`` and the like, not a local path."""
    return "://" in str(path)


def join_uri(base: str, *parts: str) -> str:
    """``base`` (a local path or a storage URI, whose query string, such as an S3 endpoint, stays
    at the end) with ``parts`` appended to its path."""
    path, sep, query = str(base).partition("?")
    return "/".join([path.rstrip("/"), *(p.strip("/") for p in parts)]) + (sep + query)


def with_scheme(path: str, storage: str) -> str:
    """A path that Ray reports inside ``storage`` (``bucket/studies/...``: pyarrow's form, without
    the scheme and query of an object store) as a URI every node can open; a local path as it is."""
    if is_uri(path) or not is_uri(storage):
        return path
    scheme = str(storage).split("://", 1)[0]
    query = str(storage).partition("?")[2]
    return f"{scheme}://{path}" + (f"?{query}" if query else "")


def read_uri_bytes(uri: str) -> bytes:
    """The bytes of a file in a storage URI (pyarrow's file systems: S3, GCS, ...)."""
    import pyarrow.fs

    fs, path = pyarrow.fs.FileSystem.from_uri(uri)
    with fs.open_input_stream(path) as f:
        return f.read()


def index_digest(indices) -> str:
    """A short digest of a set of image indices (in order): two runs measured on the same images
    have the same one (MLflow's dataset inputs)."""
    import hashlib

    import numpy as np

    return hashlib.sha256(np.asarray(list(indices), dtype=np.int64).tobytes()).hexdigest()[:16]
