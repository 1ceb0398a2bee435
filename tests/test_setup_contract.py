"""The set-up contract: the README opens with the two commands, and CI runs the second verbatim."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```(?:bash|sh)\n(.+?)\n```", text, flags=re.S)


def test_readme_opens_with_two_commands():
    text = (ROOT / "README.md").read_text()
    blocks = _readme_commands()
    assert len(blocks) >= 2
    # The two commands come before any other section of the README.
    first_section = text.find("\n## ")
    assert text.find(blocks[1]) < first_section, "the two set-up commands must open the README"
    assert "scripts/quickstart.py" in blocks[0]
    assert "pytest" in blocks[1]


def test_ci_runs_the_readme_test_command_verbatim():
    ci_lines = (ROOT / ".ci" / "run").read_text().strip().splitlines()
    test_command = _readme_commands()[1].strip()
    assert ci_lines[-1].strip() == test_command


def test_every_config_named_in_readme_exists():
    text = (ROOT / "README.md").read_text()
    for name in set(re.findall(r"configs/([a-z0-9_]+\.py)", text)):
        assert (ROOT / "configs" / name).is_file(), f"README names configs/{name}, which is missing"
