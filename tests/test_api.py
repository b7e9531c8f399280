"""The public surface: __all__, CLI help for every command, and docs that name them."""

from __future__ import annotations

import os
import types

import wayy
from tests.conftest import REPO, run_cli
from wayy.cli import main as cli_main


def test_all_matches_public_names():
    public = {n for n in dir(wayy) if not n.startswith("_")}
    # submodules become attributes once anything imports them; only those in __all__ are API
    modules = {n for n in public if isinstance(getattr(wayy, n), types.ModuleType)
               and n not in wayy.__all__}
    assert set(wayy.__all__) - {"__version__"} == public - modules
    for name in wayy.__all__:
        assert hasattr(wayy, name), name


def test_every_error_is_a_wayy_error():
    for name in wayy.__all__:
        obj = getattr(wayy, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, wayy.WayyError), name


def test_every_command_has_help_and_is_documented():
    readme = open(os.path.join(REPO, "README.md")).read()
    ops = open(os.path.join(REPO, "docs", "operations.md")).read()
    assert cli_main.commands, "no commands registered"
    for name, cmd in cli_main.commands.items():
        assert cmd.help and len(cmd.help) > 20, f"command {name} has no help text"
        r = run_cli(name, "--help")
        assert r.returncode == 0 and "Usage:" in r.stdout, name
        for param in cmd.params:
            if param.param_type_name == "option" and param.name != "help":
                assert param.help, f"{name} {param.opts} has no help text"
        assert f"wayy {name}" in readme, f"README does not mention `wayy {name}`"
        assert f"wayy {name}" in ops or name == "status" and "wayy status" in readme
    r = run_cli("--help")
    assert r.returncode == 0 and all(n in r.stdout for n in cli_main.commands)
