"""Every entry point answers `--help` (exit 0, its flags listed), even those with required
flags, which absl would otherwise refuse before the help is printed."""

import importlib

import pytest

COMMANDS = (
    "train",
    "cross_validate",
    "evaluate",
    "infer",
    "port_weights",
    "export",
    "compare_localization",
    "quickstart",
    "serve",
    "reproduce",
    "annotation_stage",
    "annotation_report",
)


@pytest.mark.parametrize("command", COMMANDS)
def test_help_exits_zero_and_lists_the_flags(command, capsys):
    main = importlib.import_module(f"qatacov_jax.cli.{command}").main
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert f"scripts/{command}.py" in out
    # absl lists each module's flags under its name: the command's own flags are there.
    section = out.split(f"qatacov_jax.cli.{command}:\n", 1)
    assert len(section) == 2 and section[1].lstrip().startswith("--"), out


def test_every_cli_module_is_covered():
    from pathlib import Path

    import qatacov_jax.cli

    modules = {p.stem for p in Path(qatacov_jax.cli.__file__).parent.glob("*.py")}
    assert modules - {"__init__", "common"} == set(COMMANDS)
