"""The project's own checks, in the fast tier: one style (ruff), the layers and no import cycles
(import-linter's contracts in pyproject.toml), the documentation site built strictly, package
surfaces that name what they export, and a README that stays a front page."""

import importlib
import pkgutil
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ROOT

BIN = Path(sys.executable).parent


def tool(name: str) -> str:
    path = shutil.which(name, path=str(BIN))
    if path is None:
        pytest.fail(f"{name} is not installed beside this Python: pip install -e '.[test]'")
    return path


def run(*cmd: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=300)


def test_ruff_finds_nothing_to_say():
    p = run(tool("ruff"), "check", ".")
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-2000:]


def test_the_tree_is_formatted_one_way():
    p = run(tool("ruff"), "format", "--check", ".")
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-2000:]


def test_the_layers_hold_and_no_package_has_an_import_cycle():
    p = run(tool("lint-imports"))
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-2000:]
    assert "0 broken" in p.stdout and "4 kept" in p.stdout, p.stdout[-2000:]


def test_a_wrong_way_import_breaks_the_layers_contract(tmp_path):
    """The contract can fail: a copy of the packages where study/ reaches up into results/
    (inside a function, which the contract counts) is refused."""
    for name in ("orchestrator", "trainables"):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    with open(tmp_path / "orchestrator" / "study" / "selection.py", "a") as f:
        f.write("\n\ndef _wrong_way():\n    from orchestrator.results import tables\n\n    return tables\n")
    env_path = f"{tmp_path}"
    p = subprocess.run(
        [tool("lint-imports")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": env_path},
    )
    assert p.returncode != 0
    assert "orchestrator.study is not allowed to import orchestrator.results" in p.stdout, p.stdout[-2000:]


def test_the_documentation_site_builds_strictly(tmp_path):
    """Broken links, missing anchors and pages left out of the navigation fail the build."""
    p = run(tool("mkdocs"), "build", "--strict", "--site-dir", str(tmp_path / "site"))
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert (tmp_path / "site" / "index.html").is_file()
    pages = {p.stem for p in (ROOT / "docs").glob("*.md")}
    built = {p.parent.name for p in (tmp_path / "site").glob("*/index.html")}
    assert pages - {"index"} <= built, pages - built


def packages():
    """Every package that holds code (a folder of data files such as the paper's numbers is not one)."""
    out = []
    for root in ("trainables", "orchestrator"):
        pkg = importlib.import_module(root)
        out.append(pkg)
        for info in pkgutil.walk_packages(pkg.__path__, root + "."):
            if info.ispkg:
                sub = importlib.import_module(info.name)
                if any(f.suffix == ".py" and f.name != "__init__.py" for f in Path(sub.__path__[0]).iterdir()):
                    out.append(sub)
    return out


def test_every_package_names_its_public_surface_and_each_name_is_what_it_says():
    """``__all__`` in every package; after every module is imported, each name still resolves to
    the function or class it exports (a lazy surface whose name is also a module's loses to the
    module once that is imported: ``table`` was the function and then the module)."""
    for pkg in packages():
        assert isinstance(getattr(pkg, "__all__", None), list), f"{pkg.__name__}: no __all__"
    for root in ("trainables", "orchestrator"):  # import everything, as a long sweep eventually does
        for info in pkgutil.walk_packages(importlib.import_module(root).__path__, root + "."):
            importlib.import_module(info.name)
    for pkg in packages():
        for name in pkg.__all__:
            value = getattr(pkg, name)
            assert not isinstance(value, type(sys)), f"{pkg.__name__}.{name} is a module, not what __all__ exports"


def test_every_import_of_our_own_code_resolves_even_inside_functions():
    """An import inside a function runs only when its path does (a failed shard's error path):
    a module moved without its callers would fail there, in a user's run, not in the tests.
    Every ``from X import NAME`` of our own packages, at any depth, in the packages, the
    benchmarks, the cluster scripts and the tests, must name a real thing."""
    import ast
    import importlib.util

    problems = []
    for root in ("trainables", "orchestrator", "bench", "cluster", "tests"):
        for path in sorted((ROOT / root).rglob("*.py")):
            module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            package = module if path.name == "__init__.py" else module.rpartition(".")[0]
            for node in ast.walk(ast.parse(path.read_text())):
                if not isinstance(node, ast.ImportFrom):
                    continue
                target = importlib.util.resolve_name("." * node.level + (node.module or ""), package)
                if target.split(".")[0] not in ("trainables", "orchestrator"):
                    continue
                if importlib.util.find_spec(target) is None:
                    problems.append(f"{path.relative_to(ROOT)}:{node.lineno}: no module {target}")
                    continue
                mod = importlib.import_module(target)
                for alias in node.names:
                    if not hasattr(mod, alias.name) and importlib.util.find_spec(f"{target}.{alias.name}") is None:
                        problems.append(f"{path.relative_to(ROOT)}:{node.lineno}: {target} has no {alias.name}")
    assert not problems, "\n".join(problems)


LONGEST_FUNCTION = 60  # lines; a longer function usually holds more than one idea


def test_no_function_is_longer_than_one_idea():
    import ast

    long = []
    for root in ("trainables", "orchestrator"):
        for path in sorted((ROOT / root).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    lines = node.end_lineno - node.lineno + 1
                    if lines > LONGEST_FUNCTION:
                        long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {lines} lines")
    assert not long, "\n".join(long)


def test_the_readme_is_a_front_page():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 150
    first = text.split("```bash", 1)[1].split("```", 1)[0]  # the first block: the two commands
    setup = [line for line in first.splitlines() if line and not line.startswith("#")]
    assert setup == [
        "python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/python orchestrator/sweep.py",
        "{ command -v chromium >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y"
        ' -qq chromium; } || echo "no Chromium: the UI checks skip"; }; python3 -m venv .venv && .venv/bin/pip install'
        ' -e ".[test]" && .venv/bin/python -m pytest',
    ]
    ci = (ROOT / ".ci" / "run").read_text()
    assert setup[1] in ci.splitlines()  # CI runs the README's test command


def test_a_process_a_test_starts_gets_its_xdist_share_of_the_cores():
    """Under pytest-xdist each worker's child processes (benchmarks, the training command, sweeps)
    use its share of the cores, not all of them (tests/conftest.py: two OpenMP threads each on two
    cores made one test 5x slower)."""
    import os

    from conftest import THREADS

    if not os.environ.get("PYTEST_XDIST_WORKER"):
        pytest.skip("not under pytest-xdist (the README's command runs it with -n 2)")
    code = "import os; print(os.environ.get('OMP_NUM_THREADS'))"
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60).stdout.strip()
    assert child == str(THREADS) and THREADS == max(
        1, (os.cpu_count() or 2) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])
    )
