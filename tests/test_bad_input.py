"""Every kind of bad input: one clear line naming the problem, a non-zero exit, no traceback,
nothing written, and (for the sweep) no Ray start.

Most cases call the command's ``main`` in this process, through the same ``run_main`` its
console entry point uses, with ``ray.init`` made to fail the test if anything calls it (a fresh
interpreter per case cost ~5 s each, most of the file's time). The cases in ``SUBPROCESS`` run
the real command in a fresh interpreter, as a user would."""

import gc
import json
import os
import subprocess
import sys

import pytest
from helpers import ROOT

SWEEP = [sys.executable, str(ROOT / "orchestrator" / "sweep.py")]
TRAIN = [sys.executable, "-m", "trainables.train"]
EVAL = [sys.executable, "-m", "trainables.evaluate"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A real small_cnn checkpoint, and a truncated copy."""
    from trainables.train import main

    d = tmp_path_factory.mktemp("ck")
    main(["--method", "natural", "--epochs", "1", "--output-dir", str(d), "--set", "monitor.every=0"])
    good = d / "checkpoint.pt"
    bad = d / "truncated.pt"
    bad.write_bytes(good.read_bytes()[:300])
    return good, bad


def study(text):
    return ("study", text)


# (command, arguments or a study file, expected message); OUT is the output directory
CASES = {
    "malformed YAML": (SWEEP, study("search: [unclosed"), "malformed YAML at line 1"),
    "YAML not a mapping": (SWEEP, study("- a\n- b\n"), "expected a mapping at the top level"),
    "unknown top-level key": (SWEEP, study("name: x\nbudget: 3\n"), "unknown key 'budget'"),
    "unknown search key": (SWEEP, study("search: {algorithmm: grid}\n"), "search: unknown key 'algorithmm'"),
    "wrong type": (SWEEP, study("search: {num_samples: many}\n"), "search.num_samples: expected an integer"),
    "alpha range outside [0, 1]": (
        SWEEP,
        study(
            "base: {method: sprout}\nsearch: {algorithm: optuna, params: {method_args.alpha: {type: float, low: 0.0, high: 1.5}}}\n"
        ),
        "search.params.method_args.alpha: value 1.5 is invalid: method_args.alpha: expected a number in [0, 1]",
    ),
    "negative Delta": (
        SWEEP,
        study("base: {method: sprout, method_args: {delta: -0.1}}\n"),
        "method_args.delta: expected a number >= 0",
    ),
    "negative gamma_beta": (
        SWEEP,
        study(
            "base: {method: sprout}\nsearch: {algorithm: optuna, params: {method_args.lr_beta: {type: float, low: -1.0, high: 0.1}}}\n"
        ),
        "method_args.lr_beta: expected a number >= 0",
    ),
    "zero epochs": (SWEEP, study("base: {epochs: 0}\n"), "epochs: expected an integer >= 1"),
    "unknown method in a study": (SWEEP, study("base: {method: madry}\n"), "unknown method 'madry'; expected one of:"),
    "unknown model in a study": (SWEEP, study("base: {model: resnet9}\n"), "unknown model 'resnet9'; expected one of:"),
    "unknown data set in a study": (
        SWEEP,
        study("base: {dataset: svhn}\n"),
        "unknown data set 'svhn'; expected one of:",
    ),
    "missing data root": (
        SWEEP,
        study("base: {dataset: imagenet, data: {root: /nonexistent/imagenet}}\n"),
        "/nonexistent/imagenet/train: missing",
    ),
    "missing CIFAR root without download": (
        SWEEP,
        study("base: {dataset: cifar10, data: {root: /nonexistent/c, download: false}}\n"),
        "cifar-10-batches-py: missing",
    ),
    "grid with a range": (
        SWEEP,
        study("search: {algorithm: grid, params: {seed: {type: int, low: 0, high: 3}}}\n"),
        "a grid study lists values",
    ),
    "unknown protocol": (SWEEP, study("evaluation: {protocol: strongest}\n"), "evaluation.protocol: expected one of"),
    "unknown settings file": (SWEEP, study("settings: figure99\n"), "unknown paper-settings file 'figure99'"),
    "seeds twice": (
        SWEEP,
        study("search: {algorithm: grid, seeds: [1, 1]}\n"),
        "search.seeds: expected distinct seeds",
    ),
    "a negative seed": (SWEEP, ["--study", "width", "--seeds", "-1"], "seeds: expected integers in [0, 2^32)"),
    "too many seeds": (
        SWEEP,
        ["--study", "width", "--seeds", *map(str, range(101))],
        "seeds: expected at most 100 seeds",
    ),
    "seeds beside a searched seed": (
        SWEEP,
        study("search: {algorithm: optuna, seeds: [0, 1], params: {seed: {type: int, low: 0, high: 3}}}\n"),
        "search.seeds: expected no searched 'seed' parameter beside them",
    ),
    "deviations without settings": (
        SWEEP,
        study("deviations: [{key: precision, reason: 'bf16 measured not to cost robustness'}]\n"),
        "deviations: expected a settings: file",
    ),
    "deviation without a reason": (
        SWEEP,
        study("settings: width\ndeviations: [{key: precision, reason: 'x'}]\n"),
        "deviations[0].reason: expected why the study differs",
    ),
    "smoke case that no stage has": (
        SWEEP,
        study("search: {algorithm: grid, cases: [{name: a, method: natural}]}\nsmoke: {cases: [b]}\n"),
        "smoke.cases: expected names of the stages' cases",
    ),
    "template reference in an Optuna stage": (
        SWEEP,
        study(
            "stages:\n  - {name: first, base: {method: natural}}\n  - name: second\n"
            "    base: {init_checkpoint: 'stage:first/model={model}'}\n"
            "    search: {algorithm: optuna, num_samples: 2, params: {method_args.alpha: {type: float, low: 0.01, high: 0.1}}}\n"
        ),
        "a reference with {key} is filled per trial of a grid search",
    ),
    "bad resources": (SWEEP, study("resources: {num_workers: 0}\n"), "resources.num_workers: expected an integer >= 1"),
    "unknown report": (SWEEP, study("report: widht\n"), "report: expected one of"),
    "no validation split where a stage selects": (
        SWEEP,
        study(
            "base: {method: sprout, data: {val_size: 0}}\nsearch: {algorithm: optuna, params: {method_args.delta: {type: float, low: 0.0, high: 0.3}}}\n"
        ),
        "base.data.val_size: expected a count >= 1 or a fraction in (0, 1) where a stage selects",
    ),
    "validation split as large as the training split": (
        SWEEP,
        study("base: {data: {val_size: 1437}}\n"),
        "data.val_size: 1437 gives 1437 validation images; expected at least 1 and fewer than the 1437 training images",
    ),
    "validation split of a negative size": (
        SWEEP,
        study("base: {data: {val_size: -5}}\n"),
        "data.val_size: expected a count of images",
    ),
    "no finalist to certify": (SWEEP, study("certify: {top_k: 0}\n"), "certify.top_k: expected an integer >= 1, got 0"),
    "an empty certification shard": (
        SWEEP,
        study("certify: {shard_size: 0}\n"),
        "certify.shard_size: expected an integer >= 1 (test images per shard), got 0",
    ),
    "certify given at the top of a staged study": (
        SWEEP,
        study("certify: {top_k: 2}\nstages: [{name: a}]\n"),
        "certify: give it inside each entry of stages",
    ),
    "a search selecting on a test-only metric": (
        SWEEP,
        study(
            "base: {method: sprout}\nsearch: {algorithm: optuna, metric: autoattack_acc, params: {method_args.delta: {type: float, low: 0.0, high: 0.3}}}\n"
        ),
        "search.metric: 'autoattack_acc' is not measured on the validation split",
    ),
    "unknown screening protocol": (
        SWEEP,
        study("evaluation: {screen: strongest}\n"),
        "evaluation.screen: expected one of",
    ),
    "unknown paper numbers": (SWEEP, study("paper: table99\n"), "paper: unknown paper-numbers file 'table99'"),
    "two stages with one name": (
        SWEEP,
        study("stages:\n  - {name: a}\n  - {name: a}\n"),
        "stages: expected distinct stage names",
    ),
    "top-level search beside stages": (
        SWEEP,
        study("search: {num_samples: 2}\nstages:\n  - {name: a}\n"),
        "search: give it inside each entry of stages",
    ),
    "ASHA grace period longer than training": (
        SWEEP,
        study("base: {epochs: 2}\nsearch: {scheduler: {type: asha, grace_period: 5}}\n"),
        "search.scheduler.grace_period: expected at most the 2 epochs a trial trains, got 5",
    ),
    # issue 13: every name, number and file checked before Ray starts
    "metric name typo": (
        SWEEP,
        study("search: {metric: robust_accc}\n"),
        "search.metric: 'robust_accc' is not reported",
    ),
    "duplicate YAML key": (SWEEP, study("base: {epochs: 1}\nbase: {epochs: 100000}\n"), "duplicate key 'base'"),
    "YAML alias bomb": (
        SWEEP,
        study(
            "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
            "c: [*b, *b, *b, *b, *b, *b, *b, *b, *b]\n"
        ),
        "YAML aliases (*name) are not accepted",
    ),
    "non-UTF-8 study file": (SWEEP, ("bytes", b"name: x\ndescription: \xff\xfe\n"), "not UTF-8 text"),
    "oversized study file": (SWEEP, study("# " + "x" * (1 << 20) + "\n"), "expected at most 1048576"),
    "study name outside runs/": (SWEEP, study("name: ../../ESCAPED\n"), "name: expected a plain name"),
    "study path given as a name": (SWEEP, ["--study", "../../etc/passwd"], "expected the name of a shipped study"),
    "abbreviated flag": (SWEEP, ["--study", "sensitivity", "--smok"], "unrecognized arguments: --smok"),
    "zero samples": (SWEEP, ["--study", "sensitivity", "--num-samples", "0"], "num_samples: expected an integer >= 1"),
    "negative samples": (
        SWEEP,
        ["--study", "sensitivity", "--num-samples", "-3"],
        "num_samples: expected an integer >= 1",
    ),
    "negative seed": (SWEEP, ["--study", "sensitivity", "--seed", "-1"], "seed: expected an integer in [0, 2^32)"),
    "huge seed": (SWEEP, study("base: {seed: 100000000000000000000}\n"), "seed: expected an integer in [0, 2^32)"),
    "infinite learning rate": (
        SWEEP,
        ["--study", "sensitivity", "--set", "optim.lr=inf"],
        "optim.lr: expected a finite number",
    ),
    "infinite Delta": (SWEEP, ["--study", "sensitivity", "--set", "method_args.delta=inf"], "expected a finite number"),
    "absurd WRN width": (
        SWEEP,
        study("base: {model: wrn, model_args: {width: 1000000}}\n"),
        "model_args.width: expected an integer in [1, 32]",
    ),
    "unknown device": (
        SWEEP,
        ["--study", "sensitivity", "--set", "device=bogus"],
        "device: expected auto, cpu, cuda or cuda:N",
    ),
    "relative SQLite URI": (
        SWEEP,
        ["--study", "sensitivity", "--tracking-uri", "sqlite://x.db"],
        "expected sqlite:////ABS/PATH",
    ),
    "unknown storage scheme": (
        SWEEP,
        ["--study", "sensitivity", "--storage-path", "bogus://x"],
        "unknown scheme 'bogus'",
    ),
    "zero evaluation batch": (
        SWEEP,
        study("evaluation: {protocol: quick, overrides: {batch_size: 0}}\n"),
        "batch_size: expected an integer >= 1",
    ),
    "evaluate: zero batch": (
        EVAL,
        ["--checkpoint", "GOOD", "--set", "batch_size=0"],
        "batch_size: expected an integer >= 1",
    ),
    "evaluate: negative AutoAttack images": (
        EVAL,
        ["--checkpoint", "GOOD", "--set", "autoattack.n=-1"],
        "n: expected an integer >= 0",
    ),
    "evaluate: CUDA without CUDA": (
        EVAL,
        ["--checkpoint", "GOOD", "--device", "cuda:7"],
        "device cuda:7: not available here",
    ),
    "evaluate: empty checkpoint": (EVAL, ["--checkpoint", "EMPTY"], "empty (0 bytes)"),
    "train: abbreviated flag": (TRAIN, ["--meth", "natural"], "unrecognized arguments: --meth"),
    "unknown study": (SWEEP, ["--study", "widthh"], "unknown study 'widthh'; expected one of:"),
    "missing study file": (SWEEP, ["--config", "/nonexistent/s.yaml"], "no such study file"),
    "unwritable output dir": (SWEEP, ["--study", "sensitivity", "--output-dir", "FILE/out"], "not writable"),
    "server that answers /health but is not MLflow": (
        SWEEP,
        ["--study", "sensitivity", "--tracking-uri", "HEALTHURL"],
        "MLflow tracking server unreachable or not MLflow",
    ),
    "stage reference without =value": (
        SWEEP,
        study("stages:\n  - {name: a}\n  - {name: b, base: {init_checkpoint: 'stage:a/method'}}\n"),
        "expected stage:NAME/key=value[,key=value], got the condition 'method'",
    ),
    "absurd WRN width from the command line": (
        SWEEP,
        ["--study", "width", "--set", "model_args.width=1e6"],
        "model_args.width: expected an integer",
    ),
    "unreachable MLflow server": (
        SWEEP,
        ["--study", "sensitivity", "--tracking-uri", "http://127.0.0.1:9", "--tracking-timeout", "1"],
        "MLflow tracking server unreachable",
    ),
    "negative MLflow wait": (
        SWEEP,
        ["--study", "sensitivity", "--tracking-timeout", "-1"],
        "--tracking-timeout: expected a number of seconds >= 0",
    ),
    "bad MLflow URI": (
        SWEEP,
        ["--study", "sensitivity", "--tracking-uri", "mlflow.db"],
        "expected sqlite:////ABS/PATH",
    ),
    "resume with nothing to resume": (SWEEP, ["--study", "sensitivity", "--resume"], "nothing to resume"),
    "init checkpoint of another architecture": (
        SWEEP,
        study("base: {model: vgg16, model_args: {width_factor: 0.1}, init_checkpoint: GOOD}\n"),
        "does not match the model vgg16",
    ),
    "truncated init checkpoint": (
        SWEEP,
        study("base: {init_checkpoint: BAD}\n"),
        "truncated or not a torch checkpoint",
    ),
    "unknown checkpoint format": (
        SWEEP,
        ["--certify", "tf_madry:GOOD", "--model", "wrn", "--dataset", "digits"],
        "--certify: tf_madry:",
    ),
    "published weights that do not fit the model": (
        SWEEP,
        ["--certify", "trades_wrn:GOOD", "--model", "wrn", "--dataset", "digits"],
        "format trades_wrn does not fit model wrn: ",
    ),
    "certify a checkpoint that does not exist": (SWEEP, ["--certify", "FILE.missing"], "no such checkpoint file"),
    "certify a file that is not a tensor file": (SWEEP, ["--certify", "FILE"], "a_file: empty (0 bytes)"),
    "published weights without --model": (
        SWEEP,
        ["--certify", "robustbench:GOOD", "--dataset", "cifar10"],
        "--model: expected the architecture of the published robustbench weights",
    ),
    "--model without --certify": (SWEEP, ["--model", "wrn"], "--model: only with --certify FILE"),
    "an evaluation stage without checkpoints": (
        SWEEP,
        study("checkpoints: []\n"),
        "checkpoints: expected at least one checkpoint to evaluate",
    ),
    "an evaluation stage that searches": (
        SWEEP,
        study(
            "checkpoints: [{name: a, checkpoint: GOOD}]\nsearch: {algorithm: grid, params: {seed: {values: [1, 2]}}}\n"
        ),
        "search: expected none in an evaluation stage",
    ),
    "unknown protocol for --certify": (SWEEP, ["--certify", "GOOD", "--protocol", "strongest"], "expected one of"),
    "an export format that does not exist": (
        SWEEP,
        ["--certify", "GOOD", "--export", "csv"],
        "certify.export: expected one of robustbench",
    ),
    "an Optuna storage that is not a database": (
        SWEEP,
        ["--optuna-storage", "sqlite:///GOOD"],
        "not a database Optuna can open (",
    ),
    "an Optuna storage URL that does not open": (
        SWEEP,
        ["--optuna-storage", "nosuchdb://127.0.0.1:9/optuna"],
        "--optuna-storage nosuchdb://127.0.0.1:9/optuna: not a database Optuna can open",
    ),
    "unreachable Ray address": (
        SWEEP,
        ["--study", "sensitivity", "--address", "127.0.0.1:9"],
        "Ray address 127.0.0.1:9: unreachable",
    ),
    "trial that never fits the cluster": (
        SWEEP,
        [
            "--study",
            "sensitivity",
            "--cluster-config",
            "GPUYAML",
            "--gpus-per-worker",
            "2",
            "--storage-path",
            "s3://bucket/sprout",
        ],
        "a worker needs {CPU: 1, GPU: 2}, more than any node type",
    ),
    "local storage on a multi-node cluster": (
        SWEEP,
        ["--study", "sensitivity", "--cluster-config", "GPUYAML"],
        "a local directory",
    ),
    "non-positive resource timeout": (
        SWEEP,
        ["--study", "sensitivity", "--resource-timeout", "0"],
        "--resource-timeout: expected a number of seconds > 0",
    ),
    "train: unknown method": (TRAIN, ["--method", "madry"], "unknown method 'madry'; expected one of:"),
    "train: out-of-range value": (
        TRAIN,
        ["--set", "method_args.alpha=2"],
        "method_args.alpha: expected a number in [0, 1]",
    ),
    "train: unknown key": (TRAIN, ["--set", "method_args.alhpa=0.1"], "method_args: unknown key 'alhpa'"),
    "train: checkpoint of another architecture": (
        TRAIN,
        ["--model", "vgg16", "--init-checkpoint", "GOOD"],
        "does not match the model vgg16",
    ),
    "train: truncated checkpoint": (TRAIN, ["--init-checkpoint", "BAD"], "truncated or not a torch checkpoint"),
    "train: unwritable output dir": (TRAIN, ["--epochs", "1", "--output-dir", "FILE/out"], "not writable"),
    "evaluate: missing checkpoint": (EVAL, ["--checkpoint", "/nonexistent/c.pt"], "no such checkpoint file"),
    "evaluate: truncated checkpoint": (EVAL, ["--checkpoint", "BAD"], "truncated or not a torch checkpoint"),
    "evaluate: another architecture": (
        EVAL,
        ["--checkpoint", "GOOD", "--model", "wrn"],
        "checkpoint architecture is small_cnn, not the requested wrn",
    ),
    "evaluate: unknown protocol": (
        EVAL,
        ["--checkpoint", "GOOD", "--protocol", "strongest"],
        "unknown protocol 'strongest'",
    ),
}


@pytest.fixture(scope="module")
def health_server():
    """An HTTP server that answers 200 "OK" to every GET, like a health endpoint: not MLflow."""
    import http.server
    import threading

    class OK(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"OK")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), OK)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


# one case per command, and the ones whose failure comes from outside Python (YAML, a socket)
SUBPROCESS = {
    "malformed YAML",
    "YAML alias bomb",
    "abbreviated flag",
    "unreachable Ray address",
    "train: unknown method",
    "train: abbreviated flag",
    "evaluate: truncated checkpoint",
    "evaluate: CUDA without CUDA",
}


def _main_of(cmd):
    if cmd is SWEEP:
        from orchestrator.sweep import main
    elif cmd is TRAIN:
        from trainables.train import main
    else:
        from trainables.evaluate import main
    return main


def run_in_process(cmd, args, cwd, monkeypatch, capfd) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ``cmd``'s main on ``args``, run as its entry point runs it."""
    import ray

    from trainables.cli import run_main

    def no_ray(*a, **k):
        raise AssertionError("Ray was started for bad input")

    monkeypatch.chdir(cwd)
    monkeypatch.setattr(ray, "init", no_ray)
    main = _main_of(cmd)
    env = dict(os.environ)  # the sweep sets some library defaults in the environment
    capfd.readouterr()
    try:
        with pytest.raises(SystemExit) as e:
            run_main(lambda: main(args))
    finally:
        os.environ.clear()
        os.environ.update(env)
        gc.unfreeze()  # the exit froze this process's heap (trainables.cli.exit_now); the tests go on
    out, err = capfd.readouterr()
    return e.value.code, out, err


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_clear_line(case, tmp_path, ckpt, health_server, monkeypatch, capfd):
    cmd, arg, message = CASES[case]
    good, bad = ckpt
    file_ = tmp_path / "a_file"
    file_.write_text("")
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    subst = lambda s: (
        s.replace("GPUYAML", str(ROOT / "cluster" / "gpu.yaml"))
        .replace("GOOD", str(good))  # noqa: E731
        .replace("BAD", str(bad))
        .replace("FILE", str(file_))
        .replace("EMPTY", str(empty))
        .replace("HEALTHURL", health_server)
    )
    out = tmp_path / "out"
    if isinstance(arg, tuple):
        f = tmp_path / "study.yaml"
        if arg[0] == "bytes":
            f.write_bytes(arg[1])
        else:
            f.write_text(subst(arg[1]))
        args = ["--config", str(f)]
    else:
        args = [subst(a) for a in arg]
    if "--output-dir" not in args:
        args += ["--output-dir", str(out)]
    if case in SUBPROCESS:
        p = subprocess.run(cmd + args, capture_output=True, text=True, cwd=tmp_path, timeout=300)
        code, stdout, stderr = p.returncode, p.stdout, p.stderr
    else:
        code, stdout, stderr = run_in_process(cmd, args, tmp_path, monkeypatch, capfd)
    assert code == 2, (code, stdout[-2000:], stderr[-2000:])
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], stderr
    assert "Traceback" not in stderr
    assert len(lines[0]) <= 700  # a bounded line, whatever the input quoted
    assert not out.exists() and not (tmp_path / "runs").exists() and not (tmp_path.parent / "ESCAPED").exists()
    assert "Started a local Ray instance" not in stdout + stderr


def test_resume_refuses_another_studys_output_directory(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "launch.json").write_text('{"parent_run_id": "x", "study": "width", "trials": {}}')
    p = subprocess.run(
        SWEEP + ["--study", "sensitivity", "--resume", "--output-dir", str(out)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert p.returncode == 2, p.stderr
    (line,) = p.stderr.strip().splitlines()
    assert "holds a launch of study 'width', not 'sensitivity'" in line
    assert sorted(f.name for f in out.iterdir()) == ["launch.json"]  # nothing else written
    assert "Started a local Ray instance" not in p.stdout + p.stderr


def test_resume_refuses_a_launch_that_ran_another_plan(tmp_path):
    """--resume with other options (here --smoke-test, not given at launch) than the launch had:
    its trials would not match their records."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "launch.json").write_text(
        '{"parent_run_id": "x", "study": "sensitivity", "plan": "0123456789abcdef", "trials": {}, "ledger": {}}'
    )
    p = subprocess.run(
        SWEEP + ["--study", "sensitivity", "--smoke-test", "--resume", "--output-dir", str(out)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert p.returncode == 2, p.stderr
    (line,) = p.stderr.strip().splitlines()
    assert "--resume: the study, --smoke-test or the command-line values differ from the launch" in line
    assert "launched as 0123456789abcdef" in line
    assert sorted(f.name for f in out.iterdir()) == ["launch.json"]
    assert "Started a local Ray instance" not in p.stdout + p.stderr


@pytest.mark.parametrize(
    "changed, now, expected",
    [
        ("stages[main].data.val_size", ["--set", "data.val_size=200"], "stages[main].data.val_size was 100"),
        ("stages[main].certify.shard_size", ["--set", "data.val_size=100"], "stages[main].certify.shard_size was 25"),
    ],
)
def test_resume_names_the_validation_or_certification_setting_that_changed(
    tmp_path, monkeypatch, capfd, changed, now, expected
):
    """--resume with another validation split or certification plan than the launch's: one line
    naming the setting, exit 2, before Ray starts."""
    from orchestrator.launch import plan_fields, plan_fingerprint
    from orchestrator.study.load import load_raw, parse, plan

    raw, src = load_raw(name="sensitivity")
    launched = plan(parse(raw, src), src, overrides={"base": {"data": {"val_size": 100}}})
    fields = plan_fields(launched)
    if changed.endswith("shard_size"):  # the launch cut shards of 25 (the study now cuts 500)
        fields[changed] = 25
    out = tmp_path / "out"
    out.mkdir()
    (out / "launch.json").write_text(
        json.dumps(
            {
                "parent_run_id": "x",
                "study": "sensitivity",
                "plan": "0" * 16 if changed.endswith("shard_size") else plan_fingerprint(launched),
                "plan_fields": fields,
                "trials": {},
                "ledger": {},
            }
        )
    )
    code, _, stderr = run_in_process(
        SWEEP, ["--study", "sensitivity", "--resume", "--output-dir", str(out), *now], tmp_path, monkeypatch, capfd
    )
    assert code == 2, stderr
    (line,) = stderr.strip().splitlines()
    assert f"--resume: {expected}" in line and "expected the same" in line, line
    assert sorted(f.name for f in out.iterdir()) == ["launch.json"]


def test_resume_refuses_another_storage_path(tmp_path, monkeypatch, capfd):
    """--resume with a --storage-path other than the launch's: its checkpoints are not there."""
    from orchestrator.launch import plan_fingerprint
    from orchestrator.study.load import load_raw, parse, plan

    raw, src = load_raw(name="sensitivity")
    fingerprint = plan_fingerprint(plan(parse(raw, src), src, smoke=True))
    out = tmp_path / "out"
    out.mkdir()
    (out / "launch.json").write_text(
        json.dumps(
            {
                "parent_run_id": "x",
                "study": "sensitivity",
                "plan": fingerprint,
                "storage_path": "/data/launch",
                "trials": {},
                "ledger": {},
            }
        )
    )
    code, stdout, stderr = run_in_process(
        SWEEP,
        [
            "--study",
            "sensitivity",
            "--smoke-test",
            "--resume",
            "--output-dir",
            str(out),
            "--storage-path",
            str(tmp_path / "elsewhere"),
        ],
        tmp_path,
        monkeypatch,
        capfd,
    )
    assert code == 2, stderr
    (line,) = stderr.strip().splitlines()
    assert "is not where the launch in" in line and "(/data/launch)" in line
    assert sorted(f.name for f in out.iterdir()) == ["launch.json"] and not (tmp_path / "elsewhere").exists()


PLACEHOLDERS = ("GOOD", "BAD", "FILE", "EMPTY", "HEALTHURL", "GPUYAML")  # filled in by the test above only
STUDY_FILE_CASES = sorted(
    c
    for c, (cmd, arg, _) in CASES.items()
    if cmd is SWEEP and isinstance(arg, tuple) and not any(p in str(arg[1]) for p in PLACEHOLDERS)
)


@pytest.mark.parametrize("case", STUDY_FILE_CASES)
def test_a_dry_run_of_a_bad_study_gives_the_same_one_line(case, tmp_path, monkeypatch, capfd):
    """--dry-run checks the study file as a real run does: the same error, exit 2, no Ray, nothing written."""
    _, arg, message = CASES[case]
    f = tmp_path / "study.yaml"
    if arg[0] == "bytes":
        f.write_bytes(arg[1])
    else:
        f.write_text(arg[1])
    if case in SUBPROCESS:
        p = subprocess.run(
            SWEEP + ["--config", str(f), "--dry-run"], capture_output=True, text=True, cwd=tmp_path, timeout=300
        )
        code, stderr = p.returncode, p.stderr
    else:
        code, _, stderr = run_in_process(SWEEP, ["--config", str(f), "--dry-run"], tmp_path, monkeypatch, capfd)
    assert code == 2 and message in stderr and len(stderr.strip().splitlines()) == 1, stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["study.yaml"]


def test_json_without_dry_run_is_refused(tmp_path, monkeypatch, capfd):
    code, _, err = run_in_process(SWEEP, ["--json"], tmp_path, monkeypatch, capfd)
    assert code == 2 and "--json: only with --dry-run" in err


def test_resume_with_other_seeds_names_them(tmp_path, monkeypatch, capfd):
    """--seeds on --resume of a launch that had other seeds: its trials would not match their records."""
    from orchestrator.launch import plan_fields, plan_fingerprint
    from orchestrator.study.load import load_raw, parse, plan

    raw, src = load_raw(name="width")
    launched = plan(parse(raw, src), src, smoke=True, overrides={"seeds": [0, 1]})
    out = tmp_path / "out"
    out.mkdir()
    (out / "launch.json").write_text(json.dumps({"parent_run_id": "x", "study": "width", "plan": plan_fingerprint(launched),
                                                 "plan_fields": plan_fields(launched), "trials": {}, "ledger": {}}))  # fmt: skip
    args = ["--study", "width", "--smoke-test", "--resume", "--output-dir", str(out), "--seeds", "0", "2"]
    code, _, stderr = run_in_process(SWEEP, args, tmp_path, monkeypatch, capfd)
    assert code == 2, stderr
    (line,) = stderr.strip().splitlines()
    assert "--resume: stages[natural].search.seeds was [0, 1]" in line and "got [0, 2]" in line, line
    assert sorted(f.name for f in out.iterdir()) == ["launch.json"]


def test_resume_with_another_optuna_storage_names_both(tmp_path, monkeypatch, capfd):
    """--optuna-storage on --resume of a launch that searched in another database: the search
    would not continue."""
    from orchestrator.launch import plan_fields, plan_fingerprint
    from orchestrator.study.load import load_raw, parse, plan

    raw, src = load_raw(name="sensitivity")
    launched = plan(parse(raw, src), src, smoke=True)
    out = tmp_path / "out"
    out.mkdir()
    first = f"sqlite:///{out / 'optuna.db'}"
    (out / "launch.json").write_text(json.dumps({"parent_run_id": "x", "study": "sensitivity", "plan": plan_fingerprint(launched),
                                                 "plan_fields": plan_fields(launched), "trials": {}, "ledger": {},
                                                 "optuna_storage": first}))  # fmt: skip
    other = f"sqlite:///{tmp_path / 'other.db'}"
    args = ["--smoke-test", "--resume", "--output-dir", str(out), "--optuna-storage", other]
    code, _, stderr = run_in_process(SWEEP, args, tmp_path, monkeypatch, capfd)
    assert code == 2, stderr
    (line,) = stderr.strip().splitlines()
    assert f"--optuna-storage {other} is not the database the launch in {out} searched in ({first})" in line, line
    assert sorted(f.name for f in out.iterdir()) == ["launch.json"] and not (tmp_path / "other.db").exists()


def test_a_paper_numbers_file_whose_cells_disagree_is_one_line_before_ray(tmp_path, monkeypatch, capfd):
    from orchestrator.study import paper

    numbers = tmp_path / "numbers"
    numbers.mkdir()
    (numbers / "clash.yaml").write_text(
        "source: x\ncells:\n  - {method: natural, model: vgg16, clean_acc: 93.3}\n  - {method: natural, clean_acc: 90.0}\n"
    )
    monkeypatch.setattr(paper, "PAPER_DIR", numbers)
    f = tmp_path / "study.yaml"
    f.write_text("name: x\npaper: clash\nbase: {method: natural, dataset: digits}\n")
    code, _, stderr = run_in_process(SWEEP, ["--config", str(f), "--dry-run"], tmp_path, monkeypatch, capfd)
    assert code == 2 and len(stderr.strip().splitlines()) == 1, stderr
    assert "cells[0] and cells[1] both describe method=natural, model=vgg16 but disagree on clean_acc" in stderr


@pytest.mark.parametrize(
    "var, value, study_text, message",
    [
        ("SPROUT_IMAGENET_ROOT", "/nonexistent/imagenet-mount", "base: {dataset: imagenet}\n",
         "/nonexistent/imagenet-mount/train: missing on node {host} ($SPROUT_IMAGENET_ROOT, the cluster file's mount)"),
        ("SPROUT_DATA_ROOT", "/nonexistent/data-root", "base: {dataset: cifar10, data: {download: false}}\n",
         "/nonexistent/data-root/cifar-10-batches-py: missing on node {host} ($SPROUT_DATA_ROOT)"),
        ("SPROUT_STORAGE_PATH", "ftp://bucket/studies", "name: x\n",
         "SPROUT_STORAGE_PATH (set in the cluster file's head environment, or by you) ftp://bucket/studies: unknown scheme 'ftp'"),
    ],
)  # fmt: skip
def test_a_bad_value_from_the_cluster_files_environment_is_one_line_naming_it(
    var, value, study_text, message, tmp_path, monkeypatch, capfd
):
    """What the cluster files set on each node (an ImageNet mount, a data root, the study storage)
    is checked before Ray starts; the line names the variable, the path and the node."""
    import socket

    f = tmp_path / "study.yaml"
    f.write_text(study_text)
    monkeypatch.setenv(var, value)
    out = tmp_path / "out"
    code, stdout, stderr = run_in_process(SWEEP, ["--config", str(f), "--output-dir", str(out)], tmp_path, monkeypatch,
                                          capfd)  # fmt: skip
    assert code == 2, stderr
    (line,) = stderr.strip().splitlines()
    assert line.startswith("error: ") and message.format(host=socket.gethostname()) in line, line
    assert not out.exists() and "Started a local Ray instance" not in stdout + stderr
