"""The documentation site builds with no warning, so no link, heading or API reference rots;
the modules, files and names the pages cite exist; every subpackage has its API page and its
line in the layout; the README stays a short front door."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "qatacov_jax"
README_MAX_LINES = 250


def _subpackages() -> list[str]:
    return sorted(p.parent.name for p in PACKAGE.glob("*/__init__.py"))


def _pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def _module_file(dotted: str) -> tuple[Path | None, list[str]]:
    """`qatacov_jax.models.layers.stacked_conv3x3` -> (models/layers.py, ["stacked_conv3x3"]):
    the deepest module the dotted name reaches, and the names after it."""
    path, parts = ROOT, dotted.split(".")
    for i, part in enumerate(parts):
        if (path / part / "__init__.py").is_file():
            path = path / part
        elif (path / f"{part}.py").is_file():
            return path / f"{part}.py", parts[i + 1 :]
        else:
            return (path / "__init__.py" if i else None), parts[i:]
    return path / "__init__.py", []


def _nav_pages() -> list[str]:
    """The pages `mkdocs.yml`'s nav lists (read as text: the file is plain YAML)."""
    nav = (ROOT / "mkdocs.yml").read_text().split("\nnav:\n", 1)[1]
    return re.findall(r"^\s*-\s+(?:[^:\n]+:\s+)?([\w/.-]+\.md)\s*$", nav, flags=re.M)


def test_site_builds_strict_without_network(tmp_path):
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log
    assert "WARNING" not in log, log
    # Every page was written, the API reference holds the modules' docstrings, and no page
    # asks for web fonts (theme `font: false`).
    assert (site / "index.html").is_file()
    for name in _subpackages():
        html = (site / "api" / name / "index.html").read_text()
        assert f'id="qatacov_jax.{name}.' in html, f"api/{name}.md rendered no module"
    for page in site.rglob("*.html"):
        assert "fonts.googleapis.com" not in page.read_text(), page


def test_every_subpackage_has_an_api_page_in_the_nav():
    nav = _nav_pages()
    for name in _subpackages():
        page = ROOT / "docs" / "api" / f"{name}.md"
        assert page.is_file(), f"docs/api/{name}.md is missing"
        assert f"::: qatacov_jax.{name}" in page.read_text()
        assert f"api/{name}.md" in nav, f"mkdocs.yml's nav lacks api/{name}.md"


def test_layout_names_every_subpackage():
    layout = (ROOT / "docs" / "layout.md").read_text()
    for name in _subpackages():
        assert re.search(rf"^\s+{name}/\s", layout, flags=re.M), f"docs/layout.md lacks {name}/"


def test_readme_is_short_and_links_every_guide_page():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) < README_MAX_LINES
    for page in _nav_pages():
        if "/" not in page and page != "README.md":
            assert f"docs/{page}" in text, f"README links no docs/{page}"


def test_code_the_pages_cite_exists():
    """`qatacov_jax/x/y.py`, `x/{a,b}.py`, `qatacov_jax.x.y.name` and `x.y.name` (x a
    subpackage) name files and modules that exist, and names those modules hold."""
    subpackages = "|".join(_subpackages())
    missing = []
    for page in _pages():
        text, where = page.read_text(), page.relative_to(ROOT)
        for sub, rest in re.findall(rf"\b({subpackages})/([\w/{{}},]+\.py)", text):
            head, _, tail = rest.partition("{")
            names = tail.split("}")[0].split(",") if tail else [""]
            for name in names:
                rel = f"{sub}/{head}{name}{tail.split('}')[1] if tail else ''}"
                if not (PACKAGE / rel).is_file():
                    missing.append(f"{where}: {rel}")
        dotted = re.findall(r"\bqatacov_jax(?:\.\w+)+", text)
        # `training.rundir.validate_config`, not `metrics.json` or `data.manual_dir` (a file,
        # a config field): the short form counts when its second part is a module.
        for short in re.findall(rf"`((?:{subpackages})(?:\.\w+)+)", text):
            sub, second = short.split(".")[:2]
            if (PACKAGE / sub / f"{second}.py").is_file() or (PACKAGE / sub / second).is_dir():
                dotted.append(f"qatacov_jax.{short}")
        for name in dotted:
            module, rest = _module_file(name)
            if module is None or len(rest) > 2:
                missing.append(f"{where}: {name}")
            elif rest and not re.search(rf"\b{rest[0]}\b", module.read_text()):
                missing.append(f"{where}: {name} ({rest[0]} is not in {module.relative_to(ROOT)})")
    assert not missing, "\n".join(missing)
