"""The layout's rules hold: import-linter's contracts in pyproject.toml pass on the package as it is, and
fail on a copy of it with one forbidden import added (so the check can fail)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT = Path(sys.executable).with_name("lint-imports")
pytestmark = pytest.mark.skipif(not LINT.exists(), reason="import-linter is not installed (pip install -e '.[dev]')")


def lint(src: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(src)}
    return subprocess.run([str(LINT), "--config", str(ROOT / "pyproject.toml"), "--no-cache"], cwd=src,
                          env=env, capture_output=True, text=True, timeout=120)


def copy_with(tmp_path: Path, module: str, line: str) -> Path:
    src = tmp_path / "src"
    shutil.copytree(ROOT / "src" / "cai", src / "cai", ignore=shutil.ignore_patterns("__pycache__"))
    path = src / module
    path.write_text(path.read_text(encoding="utf-8") + f"\n{line}\n", encoding="utf-8")
    return src


def test_the_package_keeps_its_layers_and_has_no_cycle(tmp_path: Path) -> None:
    result = lint(copy_with(tmp_path, "cai/__init__.py", "# unchanged"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 kept, 0 broken" in result.stdout


@pytest.mark.parametrize(("module", "line", "broken"), [
    # the rule that lets a judge serve as a trainer's reward: label never imports runs
    ("cai/label/base.py", "import cai.runs.job  # noqa", "src/cai reads top to bottom BROKEN"),
    # runs never imports a command
    ("cai/runs/sharded.py", "from cai.generate.sl import run_sl  # noqa", "src/cai reads top to bottom BROKEN"),
    # siblings of one layer never import each other
    ("cai/evaluate/judge.py", "import cai.generate.rl  # noqa", "src/cai reads top to bottom BROKEN"),
    # a cycle inside one package
    ("cai/core/errors.py", "import cai.core.options  # noqa", "no import cycle between the modules of any package BROKEN"),
])
def test_a_forbidden_import_breaks_a_contract(tmp_path: Path, module: str, line: str, broken: str) -> None:
    result = lint(copy_with(tmp_path, module, line))
    assert result.returncode != 0
    assert broken in result.stdout, result.stdout


def test_the_top_level_holds_packages_only() -> None:
    modules = sorted(p.name for p in (ROOT / "src" / "cai").glob("*.py"))
    assert modules == ["__init__.py", "export.py"]
    for package in (ROOT / "src" / "cai").iterdir():
        init = package / "__init__.py"
        if init.exists():
            doc = init.read_text(encoding="utf-8")
            assert doc.startswith('"""'), f"{init} has no docstring saying what it holds"
