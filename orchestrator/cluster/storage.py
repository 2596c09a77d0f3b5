"""Where checkpoints go on a cluster: a node-local ``--storage-path`` on a multi-node cluster is
refused (Ray Train must reach every checkpoint from every node); object stores and shared file
systems are accepted."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from trainables.errors import ConfigError

from .shape import ClusterShape

# File systems that every node of a cluster can share; a --storage-path on one of them is fine
# on a multi-node cluster (Ray Train needs every node to reach every checkpoint).
SHARED_FS_TYPES = (
    "nfs",
    "nfs4",
    "cifs",
    "smb3",
    "smbfs",
    "lustre",
    "gpfs",
    "beegfs",
    "cephfs",
    "ceph",
    "glusterfs",
    "fuse.gcsfuse",
    "fuse.s3fs",
    "fuse.juicefs",
    "fuse.mountpoint-s3",
    "wekafs",
)


def fs_type(path: str | os.PathLike) -> str | None:
    """The file-system type of the mount holding ``path`` (Linux /proc/mounts), or None."""
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return None
    p = os.path.realpath(path)
    best, kind = "", None
    for line in mounts:
        parts = line.split()
        if len(parts) < 3:
            continue
        mnt = parts[1].replace("\\040", " ")
        if (p == mnt or p.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best):
            best, kind = mnt, parts[2]
    return kind


STORAGE_SCHEMES = ("s3", "gs", "gcs", "abfs", "abfss", "hdfs", "file")  # what Ray's storage (pyarrow) opens


STORAGE_ENV = "SPROUT_STORAGE_PATH"  # the cluster files set it on the head: the default --storage-path
PROBE = ".sprout-storage-probe"


def check_storage(
    storage_path: str, *, multi_node: bool, declared_shared: bool, where: str, source: str = "--storage-path"
) -> None:
    """A node-local storage path cannot work on a multi-node cluster: a worker restarted on
    another node would not find its checkpoints, and Ray Train refuses to sync them. An object
    store's scheme must be one Ray opens (``probe_storage`` then writes there). ``source`` says
    where the path was set."""
    if "://" in storage_path:
        scheme = storage_path.split("://", 1)[0]
        if scheme not in STORAGE_SCHEMES:
            raise ConfigError(
                f"{source} {storage_path}: unknown scheme {scheme!r}; expected a directory or "
                f"one of {', '.join(s + '://' for s in STORAGE_SCHEMES)}"
            )
        return
    if not multi_node or declared_shared:
        return
    existing = Path(storage_path)
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    kind = fs_type(existing)
    if kind in SHARED_FS_TYPES:
        return
    raise ConfigError(
        f"{source} {storage_path}: a local directory ({kind or 'unknown'} file system) on a multi-node "
        f"cluster ({where}); use shared storage: s3://BUCKET/PATH, gs://BUCKET/PATH, or a path on an NFS mount "
        f"present on every node, as {STORAGE_ENV} in the cluster file's head environment (cluster/gpu.yaml sets "
        f"it) or --storage-path (add --shared-storage for a shared mount this check does not recognise)"
    )


def probe_storage(storage_path: str, source: str) -> None:
    """Write a small file into the object store and remove it: a bucket that does not exist, or
    refuses these credentials, is one line here. Nothing is left but, on an object store, the
    storage path's folder marker (pyarrow keeps a folder that a delete empties)."""
    import pyarrow.fs

    from trainables.files import join_uri

    try:
        fs, path = pyarrow.fs.FileSystem.from_uri(join_uri(storage_path, PROBE))
        with fs.open_output_stream(path) as f:
            f.write(b"sprout")
        fs.delete_file(path)
    except (OSError, ValueError, pyarrow.lib.ArrowException) as e:
        raise ConfigError(f"{source} {storage_path}: cannot write there ({_store_error(e)})") from None


def _store_error(e: Exception) -> str:
    """The part of an object store's error a user acts on: Arrow's "AWS Error CODE during OP
    operation: message" without the request ID, else the first line."""
    text = str(e).strip()
    if not text:
        return type(e).__name__
    if "AWS Error " in text:
        text = "AWS Error " + text.split("AWS Error ", 1)[1]
        text = re.sub(r"\s*\(Request ID: [^)]*\)", "", text)
    return text.splitlines()[0][:300]


def is_multi_node(shape: ClusterShape | None, nodes_now: list[Mapping[str, Any]]) -> tuple[bool, str]:
    """Whether trials may run on more than one machine, and why we think so."""
    if shape is not None:
        if shape.single_host:
            return False, f"{shape.provider} provider: every node runs on this machine"
        if shape.can_grow_beyond_head:
            return True, f"{shape.source} allows {shape.max_workers} worker node(s)"
    # a node is another machine when its host name or its address differs (a raylet of this
    # machine on 127.0.0.2, in a mount namespace of its own, has a disk of its own too)
    hosts = {(n.get("NodeManagerHostname"), n.get("NodeManagerAddress")) for n in nodes_now}
    if len(hosts) > 1:
        return True, f"{len(hosts)} machines (or nodes at other addresses) are in the cluster now"
    return False, "one machine"
