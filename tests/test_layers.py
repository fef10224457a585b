"""The floors of the code base hold: every import of ``l2d/`` and ``sweeps/`` (inside functions too) goes down the
layer map, never up or sideways: ``l2d/__init__.py``'s, and for ``sweeps/`` the one its folders draw (its floors, each
folder's modules in order); the read-only commands start
without torch, timm or Ray."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import l2d
import sweeps

ROOT = Path(__file__).resolve().parents[1]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[int, str, bool]]:
    """``(line, imported module, allowed back-edge)`` of every import in a file, at any depth. An import whose line
    carries ``# layer: public API`` (the lazy ``from sweeps import Sweep``) is the one documented back-edge."""
    text = path.read_text()
    lines = text.splitlines()
    tree = ast.parse(text)
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            # ``from sweeps import results`` imports the module sweeps.results.
            names = [
                f"{module}.{alias.name}" if _is_module(f"{module}.{alias.name}") else module for alias in node.names
            ]
        elif isinstance(node, ast.Call) and _dynamic_import(node) is not None:
            names = [_dynamic_import(node)]  # importlib.import_module("sweeps.cli"), __import__("..."): an import too
        else:
            continue
        allowed = "layer: public API" in lines[node.lineno - 1]
        found += [(node.lineno, name, allowed) for name in names]
    return found


def _dynamic_import(node: ast.Call) -> str | None:
    """The module an ``importlib.import_module("x")`` / ``import_module("x")`` / ``__import__("x")`` call with a
    constant name imports (None for any other call)."""
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
    if name not in ("import_module", "__import__") or not node.args:
        return None
    first = node.args[0]
    return first.value if isinstance(first, ast.Constant) and isinstance(first.value, str) else None


def _is_module(name: str) -> bool:
    path = ROOT / Path(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _owner(name: str, rank: dict[str, int]) -> str | None:
    """The module of the map an imported name belongs to (its longest mapped prefix)."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in rank:
            return candidate
    return None


def _rank(layers: list[list[str]]) -> dict[str, int]:
    """Each module's position in the map: floors bottom first, modules within a floor in order."""
    order = [module for floor in layers for module in floor]
    assert len(order) == len(set(order)), "a module is in the layer map twice"
    return {module: index for index, module in enumerate(order)}


def violations(package, layers: list[list[str]]) -> list[str]:
    rank = _rank(layers)
    root = ROOT / package.__name__
    problems = []
    for path in sorted(root.rglob("*.py")):
        module = _module_name(path)
        if module not in rank:
            problems.append(f"{module}: not in the layer map of {package.__name__}/__init__.py")
            continue
        for line, name, allowed in _imports(path):
            if name.split(".")[0] not in ("l2d", "sweeps"):
                continue
            target = _owner(name, rank)
            if target is None or target == module or allowed:
                continue
            if rank[target] > rank[module]:
                problems.append(
                    f"{path.relative_to(ROOT)}:{line}: {module} imports {target}, which is above it "
                    f"(or beside it) in the layer map"
                )
    return problems


def folder_layers() -> list[list[str]]:
    """The layer map of ``sweeps/`` as its folders draw it: one floor per entry of ``sweeps.FLOORS`` (a sub-package,
    its modules in the order of its ``MODULES``, read from its ``__init__.py`` without importing it; or a module),
    under the package itself. Also checks that the folders and the lists agree: every module of a folder listed, every
    listed module there, no folder that is not a floor."""
    root = ROOT / "sweeps"
    layers, problems = [["sweeps"]], []
    for floor in sweeps.FLOORS:
        if (root / f"{floor}.py").is_file():
            layers.append([f"sweeps.{floor}"])
            continue
        listed = _listed_modules(root / floor / "__init__.py")
        present = {p.stem for p in (root / floor).glob("*.py")}
        problems += [f"sweeps/{floor}/{m}.py is not in its MODULES" for m in sorted(present - set(listed))]
        problems += [f"sweeps/{floor}/__init__.py lists {m}, which is not there" for m in listed if m not in present]
        layers.append([f"sweeps.{floor}" if m == "__init__" else f"sweeps.{floor}.{m}" for m in listed])
    folders = {p.name for p in root.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    problems += [f"sweeps/{f}/ is not a floor of sweeps.FLOORS" for f in sorted(folders - set(sweeps.FLOORS))]
    stray = {p.stem for p in root.glob("*.py")} - {"__init__"} - set(sweeps.FLOORS)
    problems += [f"sweeps/{m}.py is in no floor" for m in sorted(stray)]
    assert not problems, "\n".join(problems)
    return layers


def _listed_modules(init: Path) -> list[str]:
    """The ``MODULES = [...]`` list of a floor's ``__init__.py``."""
    for node in ast.parse(init.read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "MODULES" for t in node.targets):
            return list(ast.literal_eval(node.value))
    raise AssertionError(f"{init.relative_to(ROOT)} has no MODULES list (its floor's modules, bottom first)")


@pytest.mark.parametrize("package", [l2d, sweeps], ids=["l2d", "sweeps"])
def test_every_import_goes_down_the_layer_map(package):
    layers = package.LAYERS if package is l2d else folder_layers()
    problems = violations(package, layers)
    assert not problems, "\n".join(problems)


def test_the_folders_are_the_floors(tmp_path, monkeypatch):
    """The map comes from the folders: a module in a folder but not in its list, a folder that is not a floor and a
    module left at the top are each named."""
    import shutil

    fake = tmp_path / "sweeps"
    shutil.copytree(ROOT / "sweeps", fake, ignore=shutil.ignore_patterns("__pycache__"))
    (fake / "results" / "extra.py").write_text("")
    (fake / "stray").mkdir()
    (fake / "stray" / "__init__.py").write_text("")
    (fake / "loose.py").write_text("")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    with pytest.raises(AssertionError) as raised:
        folder_layers()
    message = str(raised.value)
    assert "sweeps/results/extra.py is not in its MODULES" in message
    assert "sweeps/stray/ is not a floor of sweeps.FLOORS" in message
    assert "sweeps/loose.py is in no floor" in message


def test_l2d_never_imports_sweeps_or_ray():
    for path in (ROOT / "l2d").rglob("*.py"):
        for line, name, _ in _imports(path):
            assert name.split(".")[0] not in ("sweeps", "ray"), f"{path}:{line} imports {name}"


def test_the_layer_test_catches_an_upward_import(tmp_path, monkeypatch):
    """The check itself: an import from a lower floor to a higher one is reported, naming both."""
    layers = folder_layers()
    # Pretend sweeps.results (records) imports the drivers (sweeps.tune.runner): that edge must be named.
    original = _imports

    def with_upward_edge(path):
        found = original(path)
        if _module_name(path) == "sweeps.results":
            found.append((1, "sweeps.tune.runner", False))
        return found

    monkeypatch.setattr(sys.modules[__name__], "_imports", with_upward_edge)
    problems = violations(sweeps, layers)
    assert any("sweeps.results imports sweeps.tune.runner" in p for p in problems), problems


def test_an_import_through_importlib_is_an_import(tmp_path):
    """``importlib.import_module("sweeps.cli")`` in a lower floor is found like an ``import`` statement."""
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import importlib\n\n\ndef late():\n    return importlib.import_module('sweeps.cli')\n\n\n"
        "def later():\n    return __import__('sweeps.tune.runner')\n"
    )
    found = [name for _, name, _ in _imports_of_text(probe)]
    assert "sweeps.cli" in found and "sweeps.tune.runner" in found


def _imports_of_text(path: Path) -> list[tuple[int, str, bool]]:
    """:func:`_imports` of a file outside the package (its own package taken as ``sweeps``)."""
    target = ROOT / "sweeps" / f"_probe_{path.stem}.py"
    target.write_text(path.read_text())
    try:
        return _imports(target)
    finally:
        target.unlink()


HEAVY = ("torch", "timm", "ray")


def _imported_by(argv: list[str]) -> list[str]:
    code = (
        "import sys, runpy\n"
        f"sys.argv = {['l2d-sweep', *argv]!r}\n"
        "try:\n"
        "    from sweeps.cli import main\n"
        "    code = main(sys.argv[1:])\n"
        "except SystemExit as done:\n"
        "    code = done.code\n"
        "if code not in (0, None):\n"
        "    print(f'l2d-sweep exited {code}', file=sys.stderr)\n"
        "    sys.exit(3)\n"
        "import json\n"
        f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    # A command that crashed imports less: the check means something only when the command did its job.
    assert result.returncode == 0, (argv, result.stderr[-2000:])
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_help_imports_no_torch_timm_or_ray():
    assert _imported_by(["--help"]) == []
    assert _imported_by(["run", "--help"]) == []
    assert _imported_by(["train", "--help"]) == []


def _small_sweep(tmp_path) -> Path:
    """A finished sweep folder made without Ray: marker, spec and results tables, as a driver leaves them."""
    import yaml

    from l2d.storage import Location
    from sweeps.folder.marker import write_marker
    from sweeps.results import ResultsWriter
    from tests.sweeps.conftest import TINY_SPEC

    folder = tmp_path / "sweeps" / "tiny"
    folder.mkdir(parents=True)
    write_marker(Location.parse(folder))
    (folder / "spec.yaml").write_text(yaml.safe_dump({**TINY_SPEC, "storage": str(tmp_path / "sweeps")}))
    writer = ResultsWriter(Location.parse(folder), 3)
    for index in range(2):  # a completed trial, then a stopped one
        config = {
            "teacher": "test_resnet",
            "student": "test_efficientnet",
            "method": "l2d",
            "lr": 1e-3,
            "lambda_mld": 1.0 + index,
        }
        for epoch in range(1, 4 - 2 * index):
            writer.record_epoch(
                f"t{index}",
                config,
                {"epoch": epoch, "val_mAP": 40.0 + epoch + index, "test_mAP": 39.0 + epoch, "student_params": 1000.0},
            )
        writer.finish(f"t{index}", config)
    writer.write()
    return folder


def test_read_commands_import_no_torch_timm_or_ray(tmp_path, monkeypatch):
    from sweeps.cli import main

    folder = _small_sweep(tmp_path)
    main(["validate", str(ROOT / "search_spaces" / "quickstart.yaml")])  # fills timm's name index in the cache
    assert _imported_by(["status", str(folder)]) == []
    assert _imported_by(["results", str(folder)]) == []
    assert _imported_by(["results", str(folder), "--sql", "SELECT count(*) FROM epochs"]) == []
    assert _imported_by(["validate", str(ROOT / "search_spaces" / "quickstart.yaml")]) == []
    assert _imported_by(["list", str(folder.parent)]) == []
    assert _imported_by(["compare", str(folder), str(folder)]) == []
    assert _imported_by(["completion", "bash"]) == []
