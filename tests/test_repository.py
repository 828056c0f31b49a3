"""The repository keeps its promises: README commands, CI script, layout."""
import re

from conftest import REPO


def _readme_commands():
    text = (REPO / "README.md").read_text()
    return re.findall(r"```bash\n(python3 -m venv .venv && [^\n]+)\n```", text)


def test_readme_has_the_two_commands():
    commands = _readme_commands()
    assert len(commands) == 2
    assert any("astromorph demo" in c for c in commands)
    assert any("pytest" in c for c in commands)


def test_ci_runs_the_readme_test_command():
    test_command = next(c for c in _readme_commands() if "pytest" in c)
    assert test_command in (REPO / ".ci" / "run").read_text()


def test_design_card_layout():
    for path in ("pyproject.toml", "astromorph", "models", "training/pyproject.toml", "tests",
                 "docs", "benchmarks"):
        assert (REPO / path).exists(), path
