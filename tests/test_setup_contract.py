"""The set-up contract: the README opens with the two commands, both install the versions of
constraints.txt, and CI runs the second verbatim."""

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


def test_both_commands_install_the_pinned_versions():
    pins = [
        line.strip()
        for line in (ROOT / "constraints.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert pins
    for pin in pins:
        assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*==[A-Za-z0-9.+!-]+", pin), pin
        assert not pin.lower().startswith("qatacov"), "the package itself is not pinned"
    for command in _readme_commands()[:2]:
        installs = re.findall(r"pip install [^&]+", command)
        assert installs
        for install in installs:
            assert "-c constraints.txt" in install, install
    # tf-keras on top without its dependencies (they pull the full `tensorflow` wheel).
    assert "pip install -q --no-deps -c constraints.txt tf-keras==" in _readme_commands()[1]


def test_every_config_named_in_readme_and_docs_exists():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    for page in pages:
        for name in set(re.findall(r"configs/([a-z0-9_/]+\.py)", page.read_text())):
            where = page.relative_to(ROOT)
            assert (ROOT / "configs" / name).is_file(), f"{where} names configs/{name}, missing"
