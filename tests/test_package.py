"""The install layout: one `r2` namespace over the top-level folders, a light import path."""

import configparser
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

import r2
from r2.cli import COMMANDS, main

ROOT = Path(__file__).resolve().parents[1]
ROOMS = {"r2": "r2", "r2.cache": "cache", "r2.extract": "extract", "r2.train": "train",
         "r2.evaluate": "evaluate"}


def _setup_cfg():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    return cfg


def test_package_dir_maps_every_room():
    lines = [l.strip() for l in _setup_cfg()["options"]["package_dir"].splitlines() if l.strip()]
    mapping = dict(tuple(p.strip() for p in l.split("=")) for l in lines)
    assert mapping == ROOMS


def test_every_package_folder_is_listed():
    listed = {p.strip() for p in _setup_cfg()["options"]["packages"].split() if p.strip()}
    on_disk = set()
    for name, folder in ROOMS.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            sub = ".".join(rel.parts)
            pkg = f"{name}.{sub}" if sub else name
            # r2/cache etc. must never exist: those names belong to the mapped folders
            assert not (name == "r2" and sub.split(".")[0] in {"cache", "extract", "train", "evaluate"}), pkg
            on_disk.add(pkg)
    assert on_disk == listed, f"setup.cfg packages out of date: {sorted(on_disk ^ listed)}"


def test_rooms_import_under_r2_and_not_top_level(tmp_path):
    code = (
        "import importlib.util, sys\n"
        "import r2.cache, r2.extract, r2.train, r2.evaluate\n"
        f"root = {str(ROOT)!r}\n"
        "for bare in ('cache', 'extract', 'train', 'evaluate'):\n"
        "    spec = importlib.util.find_spec(bare)\n"
        "    assert spec is None or not str(spec.origin).startswith(root), (bare, spec.origin)\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_light_modules_do_not_import_torch(tmp_path):
    code = (
        "import sys, r2, r2.cli, r2.evaluate, r2.cache\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_tokenizer_assets_ship_inside_the_package():
    folder = Path(r2.__file__).parent / "assets" / "clip-tokenizer"
    assert (folder / "vocab.json").stat().st_size > 900_000
    assert (folder / "merges.txt").stat().st_size > 500_000
    assert "Copyright" in (folder / "LICENSE").read_text()


def test_cli_help_and_version():
    runner = CliRunner()
    result = runner.invoke(main, ["--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output
    result = runner.invoke(main, ["--version"])
    assert result.exit_code == 0 and r2.__version__ in result.output


def test_command_table_names_modules_under_r2_cli():
    for name, spec in COMMANDS.items():
        assert spec.startswith("r2.cli."), (name, spec)
