"""The rooms of DESIGN.md and what each may import, checked on the source of every module.

    room          may import (besides the standard library and its own modules)
    r2.cache      numpy, h5py
    r2.evaluate   numpy
    r2.extract    r2.cache; torch, transformers, av, joblib, numpy, h5py, tqdm, safetensors
    r2.train      r2.cache, r2.model, r2.evaluate (the val metrics each epoch are r2 score's)
    r2.model      torch, numpy, safetensors
    r2 (CLI, …)   everything

Every room may also use the standard-library helpers of the ``r2`` package root
(``r2.fileio``, ``r2.lazy``, ``r2.cpus``, the version), which import nothing else; the rooms
that run torch may use ``r2.onednn``. A video needs ``r2.extract`` and a model ``r2.train``
together in one place: ``r2.grounding`` (``r2 predict VIDEO``), in the room that may import
everything.
"""

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HELPERS = {"r2", "r2.fileio", "r2.lazy", "r2.cpus"}  # the package root's standard-library helpers
ROOMS = {  # room: (folder, r2 modules it may import, third-party packages it may import; None: any)
    "r2.cache": ("cache", set(), {"numpy", "h5py"}),
    "r2.evaluate": ("evaluate", set(), {"numpy"}),
    "r2.extract": ("extract", {"r2.cache", "r2.onednn"}, None),
    "r2.train": ("train", {"r2.cache", "r2.model", "r2.evaluate", "r2.onednn"}, None),
    "r2.model": ("r2/model", {"r2.onednn"}, {"torch", "numpy", "safetensors"}),
}


def _module_name(room: str, folder: Path, path: Path) -> str:
    parts = list(path.relative_to(folder).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join([room, *parts])


def _root_import(name: str) -> str:
    """The module that ``from r2 import <name>`` imports: ``r2.<name>`` for a module or package
    of the root (``r2/fileio.py``, ``r2/cli/``), the module a lazy name comes from
    (``R2Model``: ``r2.model``), else ``r2`` itself (``DATASETS``, ``__version__``)."""
    import r2

    if (ROOT / "r2" / f"{name}.py").is_file() or (ROOT / "r2" / name / "__init__.py").is_file():
        return f"r2.{name}"
    return r2._LAZY.get(name, "r2")


def imports_of(path: Path, module: str) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import statement in the file of ``module``,
    also those inside functions (they run as well, only later)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module
            # `from r2 import onednn` imports the module r2.onednn, `from r2 import R2Model`
            # r2.model; `from r2 import DATASETS` a name of the root (standard library only)
            found += [(node.lineno, _root_import(a.name) if name == "r2" else name) for a in node.names]
    return found


def _allowed(name: str, room: str, modules: set[str], third_party: set[str] | None) -> bool:
    top = name.split(".")[0]
    if top == "r2":
        if name in HELPERS or name == room or name.startswith(room + "."):
            return True
        return any(name == m or name.startswith(m + ".") for m in modules)
    if top in sys.stdlib_module_names or top == "__future__":
        return True
    return third_party is None or top in third_party


@pytest.mark.parametrize("room", sorted(ROOMS))
def test_each_room_imports_only_what_its_row_allows(room):
    folder, modules, third_party = ROOMS[room]
    base = ROOT / folder
    files = sorted(base.rglob("*.py"))
    assert files, base
    wrong = []
    for path in files:
        module = _module_name(room, base, path)
        for line, name in imports_of(path, module):
            if not _allowed(name, room, modules, third_party):
                wrong.append(f"{path.relative_to(ROOT)}:{line}: {name}")
    wrong = list(dict.fromkeys(wrong))  # one line per statement
    assert not wrong, f"{room} may not import these:\n" + "\n".join(wrong)


def test_the_helpers_every_room_may_use_import_only_the_standard_library():
    for name in sorted(HELPERS - {"r2"}):
        path = ROOT / "r2" / f"{name.split('.')[1]}.py"
        for line, imported in imports_of(path, name):
            top = imported.split(".")[0]
            assert top in sys.stdlib_module_names or top == "__future__", f"{path}:{line}: {imported}"
    # the package root itself: only the lazy table (its names resolve on first use)
    assert [n for _, n in imports_of(ROOT / "r2" / "__init__.py", "r2")] == ["r2.lazy"]


def test_the_check_sees_a_forbidden_import(tmp_path):
    """The walk finds imports inside functions and relative ones, and names them absolutely."""
    path = tmp_path / "loop.py"
    path.write_text("import torch\nfrom ..extract import clip\n\ndef f():\n    from r2.extract.clip import x\n"
                    "    from . import data\n    from r2 import onednn, __version__\n")
    found = imports_of(path, "r2.train.loop")
    assert found == [(1, "torch"), (2, "r2.extract"), (5, "r2.extract.clip"), (6, "r2.train"),
                     (7, "r2.onednn"), (7, "r2")]
    _, modules, third_party = ROOMS["r2.train"]
    assert [n for _, n in found if not _allowed(n, "r2.train", modules, third_party)] == ["r2.extract",
                                                                                          "r2.extract.clip"]
    assert not _allowed("torch", "r2.evaluate", *ROOMS["r2.evaluate"][1:])
    # a lazy name of the root is its module's import; a plain constant of the root is the root's
    path.write_text("from r2 import DATASETS, R2Model\n")
    assert imports_of(path, "r2.evaluate.detect") == [(1, "r2"), (1, "r2.model")]
    assert not _allowed("r2.model", "r2.evaluate", *ROOMS["r2.evaluate"][1:])
