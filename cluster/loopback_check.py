"""The README's cluster cycle through Ray's real launcher, on this machine over SSH (loopback).

    python cluster/loopback_check.py            # from the project root, with the project's venv
    python cluster/loopback_check.py --keep     # leave the SSH server, its files and the head's files behind

What it does, as a person would with `cluster/local.yaml`:

1. installs what a client and a head need when missing (Debian packages: an SSH server and
   client, rsync, netcat), makes a key of its own and starts an SSH server bound to 127.0.0.1
   that accepts only that key (on a port of its own: the launcher reaches it through
   `ssh_proxy_command`);
2. writes `cluster/local.yaml` with only its addresses (the head is 127.0.0.1, no workers), the
   SSH user and key, the worker counts and the head's CPU count changed (there is no worker node
   to train on), and its study storage (SPROUT_STORAGE_PATH) a directory in the head's home;
   makes Ray's token if there is none (`ray get-auth-token --generate`);
3. `ray up`, then at once `ray submit ... orchestrator/sweep.py -- --smoke-test` with no storage
   or tracking flag (the cluster file sets both); checks the summary on the head, that the
   checkpoints are in that storage and the study's runs on the head's MLflow server; `ray down`,
   and checks that it stopped the MLflow server;
4. prints one line of figures: the time to `ray up`, from `ray submit` to the first trial's first
   epoch, and in all.

The head is this machine and this user: `ray up` installs the project into the `python3` on the
PATH (the head's setup command), copies it to ~/sprout-orchestrator and keeps MLflow in
~/mlflow, as it would on a real head node; afterwards (without --keep) it removes what `ray up`
and `ray submit` left in the home directory and restores ~/.bashrc, since a bootstrap config left
there makes this machine look like a head node to every later sweep. Not part of CI (it takes minutes and installs
packages); run it after changing anything under cluster/ and put its line in the README.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).parent / "ray")
PACKAGES = {"sshd": "openssh-server", "ssh": "openssh-client", "rsync": "rsync", "nc": "netcat-openbsd"}
OUTPUT = "~/loopback-runs/smoke"  # on the head (here): the smoke study's output directory


def say(line: str) -> None:
    print(f"[loopback] {line}", flush=True)


def run(cmd: list[str], timeout: float, **kw) -> subprocess.CompletedProcess:
    say("$ " + " ".join(cmd))
    p = subprocess.run(cmd, text=True, capture_output=True, timeout=timeout, **kw)
    if p.returncode != 0:
        raise SystemExit(f"[loopback] FAILED ({p.returncode}): {' '.join(cmd)}\n{p.stdout[-4000:]}\n{p.stderr[-4000:]}")
    return p


def install_missing() -> None:
    missing = [
        pkg for tool, pkg in PACKAGES.items() if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists()
    ]
    if missing:
        run(["apt-get", "update", "-q"], 600)
        run(["apt-get", "install", "-y", "-q", *missing], 900, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_sshd(d: Path) -> tuple[subprocess.Popen, Path, int]:
    """An SSH server on 127.0.0.1 with its own host key, accepting only a key made here."""
    key, host = d / "id_ed25519", d / "host_ed25519"
    for k in (key, host):
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(k)], 60)
    (d / "authorized_keys").write_text(Path(f"{key}.pub").read_text())
    (d / "authorized_keys").chmod(0o600)
    port = free_port()
    config = d / "sshd_config"
    config.write_text(
        "\n".join(
            [
                f"ListenAddress 127.0.0.1:{port}",
                f"HostKey {host}",
                f"AuthorizedKeysFile {d / 'authorized_keys'}",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "PermitRootLogin prohibit-password",
                "StrictModes no",
                "UsePAM no",
                f"PidFile {d / 'sshd.pid'}",
                "Subsystem sftp internal-sftp",
                "",
            ]
        )
    )
    Path("/run/sshd").mkdir(exist_ok=True)  # privilege separation directory
    sshd = shutil.which("sshd") or "/usr/sbin/sshd"
    proc = subprocess.Popen(
        [sshd, "-D", "-e", "-f", str(config)], stdout=subprocess.DEVNULL, stderr=open(d / "sshd.log", "w")
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, key, port
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"[loopback] the SSH server did not start: {(d / 'sshd.log').read_text()[-2000:]}")


def loopback_config(d: Path, key: Path, port: int) -> Path:
    """cluster/local.yaml with only the addresses, user, key, worker counts and head CPUs changed."""
    import yaml

    cfg = yaml.safe_load((ROOT / "cluster" / "local.yaml").read_text())
    cfg["cluster_name"] = "sprout-loopback"
    cfg["provider"].update({"head_ip": "127.0.0.1", "worker_ips": []})
    cfg["auth"] = {
        "ssh_user": getpass.getuser(),
        "ssh_private_key": str(key),
        "ssh_proxy_command": f"nc 127.0.0.1 {port}",
    }
    cfg["min_workers"] = cfg["max_workers"] = 0
    # the study storage, named once in the file: here a directory of the head's own (the NFS path
    # of the real file does not exist on this machine)
    cfg["head_setup_commands"] = [
        c.replace("/mnt/shared/sprout", f"$HOME/{STORAGE}") if "SPROUT_STORAGE_PATH" in c else c
        for c in cfg["head_setup_commands"]
    ]
    assert any(STORAGE in c for c in cfg["head_setup_commands"]), "cluster/local.yaml names no SPROUT_STORAGE_PATH"
    cpus = os.cpu_count() or 2
    cfg["head_start_ray_commands"] = [
        c.replace("--num-cpus=0", f"--num-cpus={cpus}") for c in cfg["head_start_ray_commands"]
    ]
    path = d / "loopback.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def token() -> None:
    """Ray's token (made once, as the README says), readable by its owner only."""
    t = Path("~/.ray/auth_token").expanduser()
    if not t.exists():
        run([RAY, "get-auth-token", "--generate"], 120)
    t.chmod(0o600)


def mlflow_answers(timeout: float = 5) -> bool:
    """The head's MLflow server answers, by the sweep's own probe."""
    from orchestrator.cluster.mlflow_server import answers

    return answers("http://127.0.0.1:5000", timeout)


def check_results() -> str:
    """The smoke study's summary on the head, and its runs on the head's MLflow server."""
    summary = json.loads(Path(OUTPUT, "summary.json").expanduser().read_text())
    trials = summary["trials"]
    assert trials and all(t["status"] == "completed" for t in trials), [t["status"] for t in trials]
    assert summary["tracking_uri"] == "http://127.0.0.1:5000", summary["tracking_uri"]
    with urllib.request.urlopen(
        "http://127.0.0.1:5000/api/2.0/mlflow/experiments/get-by-name?experiment_name=sensitivity", timeout=10
    ) as r:
        exp = json.loads(r.read())["experiment"]["experiment_id"]
    req = urllib.request.Request(
        "http://127.0.0.1:5000/api/2.0/mlflow/runs/search",
        method="POST",
        data=json.dumps({"experiment_ids": [exp], "max_results": 200}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        runs = json.loads(r.read()).get("runs", [])
    ids = {run["info"]["run_id"] for run in runs}
    assert summary["mlflow_parent_run_id"] in ids and {t["mlflow_run_id"] for t in trials} <= ids
    storage = Path("~", STORAGE).expanduser()
    assert all(str(t["checkpoint"]).startswith(str(storage)) for t in trials), "checkpoints outside SPROUT_STORAGE_PATH"
    certified = sum(1 for t in trials if t.get("finalist"))
    return f"{len(trials)} trials, {certified} certified, {len(runs)} MLflow runs on the head's server"


# what `ray up` and `ray submit` leave in the head's home directory (the head is this machine)
STORAGE = "loopback-storage"  # the head's SPROUT_STORAGE_PATH, under its home
HEAD_FILES = ("ray_bootstrap_config.yaml", "ray_bootstrap_key.pem", "sprout-orchestrator", "mlflow", "loopback-runs",
              "sweep.py", STORAGE)  # fmt: skip


class HeadHome:
    """The head's files in this machine's home directory, put back as they were afterwards: a
    bootstrap config left behind makes this machine look like a head node to every later sweep
    (and so to a test suite run here)."""

    def __init__(self) -> None:
        self.home = Path("~").expanduser()
        self.existed = {name for name in HEAD_FILES if (self.home / name).exists()}
        self.bashrc = (self.home / ".bashrc").read_text() if (self.home / ".bashrc").exists() else None

    def restore(self) -> None:
        for name in HEAD_FILES:
            path = self.home / name
            if name in self.existed or not (path.exists() or path.is_symlink()):
                continue
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink()
        if self.bashrc is not None:
            (self.home / ".bashrc").write_text(self.bashrc)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keep", action="store_true", help="leave the SSH server, its files and the head's files behind")
    args = ap.parse_args(argv)
    t0 = time.monotonic()
    home = HeadHome()
    install_missing()
    d = Path(tempfile.mkdtemp(prefix="sprout-loopback-"))
    sshd, key, port = start_sshd(d)
    config = loopback_config(d, key, port)
    try:
        token()
        t_up = time.monotonic()
        run([RAY, "up", "-y", "--no-config-cache", str(config)], 1800, cwd=ROOT)
        up_s = time.monotonic() - t_up
        assert mlflow_answers(), "ray up returned before the head's MLflow server answered"
        t_submit = time.monotonic()
        log = d / "submit.log"
        with open(log, "w") as f:
            sub = subprocess.Popen(
                [
                    RAY,
                    "submit",
                    str(config),
                    "orchestrator/sweep.py",
                    "--",
                    "--smoke-test",  # no storage or tracking flags: the cluster file sets both
                    "--output-dir",
                    OUTPUT,
                ],
                cwd=ROOT,
                stdout=f,
                stderr=subprocess.STDOUT,
                text=True,
            )
            first = None
            while sub.poll() is None:
                if first is None and " epoch 1:" in log.read_text():
                    first = time.monotonic() - t_submit
                time.sleep(1)
        text = log.read_text()
        if sub.returncode != 0:
            raise SystemExit(f"[loopback] FAILED: ray submit exited {sub.returncode}\n{text[-5000:]}")
        first = first if first is not None else float("nan")
        for noise in ("maximum expected startup concurrency", "View run", "View experiment"):
            assert noise not in text, f"the joined cluster's console says {noise!r}"
        results = check_results()
        run([RAY, "down", "-y", str(config)], 600, cwd=ROOT)
        time.sleep(3)
        assert not mlflow_answers(timeout=2), "ray down left the head's MLflow server running"
        mode = Path("~/.ray/auth_token").expanduser().stat().st_mode & 0o777
        assert mode == 0o600, f"~/.ray/auth_token has mode {oct(mode)}, expected 0o600"
        print(
            f"loopback check passed ({time.strftime('%Y-%m-%d')}): ray up {up_s:.0f} s, first trial's first epoch "
            f"{first:.0f} s after ray submit, {time.monotonic() - t0:.0f} s in all; {results}; ray down stopped MLflow"
        )
        return 0
    finally:
        if not args.keep:
            sshd.terminate()
            shutil.rmtree(d, ignore_errors=True)
            home.restore()


if __name__ == "__main__":
    sys.exit(main())
