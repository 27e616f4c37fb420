"""The architecture, checked: the layers of ``tarproc/`` (issue 16), no
upward imports, signal handlers installed only in their one home, no
module-level run state in the library.

The layers, lowest first; a module imports only from its own layer or a
lower one (``ops`` and ``executor`` are siblings: neither imports the other):

- the ground: ``tarproc`` (``errors``, ``samples``, ``procs``, ``sizes``,
  ``guard``)
- ``tarproc.io``: bytes in and out
- ``tarproc.ops`` and ``tarproc.executor``: what is done to samples
- ``tarproc.jobs``: shard tasks on engines
- ``tarproc.cli``: the tools

Imports under ``if TYPE_CHECKING:`` are annotations only and not counted."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "tarproc"

LAYERS = {"ground": 0, "io": 1, "ops": 2, "executor": 2, "jobs": 3, "cli": 4}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
LIBRARY = {m: p for m, p in MODULES.items() if not m.startswith("tarproc.cli")}


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in LAYERS) else "ground"


def runtime_imports(path: Path) -> set[str]:
    """The tarproc modules ``path`` imports when it runs (absolute names)."""
    tree = ast.parse(path.read_text())
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(n) for n in ast.walk(node))
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "tarproc":
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in MODULES else target)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "tarproc")
    return found


def test_the_layers_are_the_tree():
    """Every module lies in a known layer, and each layer holds modules."""
    seen = {layer(m) for m in MODULES}
    assert seen == set(LAYERS), seen
    assert len([m for m in MODULES if layer(m) == "ground"]) <= 8, "the ground layer grows: give it a package"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_imports_a_higher_layer(module):
    mine = layer(module)
    for target in runtime_imports(MODULES[module]):
        if target == "tarproc":  # the package itself: __version__, the lazy API
            continue
        theirs = layer(target)
        assert LAYERS[theirs] < LAYERS[mine] or theirs == mine, f"{module} ({mine}) imports {target} ({theirs})"


def test_the_layer_check_sees_imports():
    """The scan above finds real imports (it cannot pass by seeing none)."""
    assert "tarproc.io.tario" in runtime_imports(MODULES["tarproc.io.sinks"])
    assert any(layer(t) == "jobs" for t in runtime_imports(MODULES["tarproc.cli.tarmap"]))


#: the tools' shared base, lowest first: each module imports only those before it
CLI_BASE = ["tarproc.cli.options", "tarproc.cli.tool", "tarproc.cli.app"]
#: what else of tarproc.cli the base may use: the package (TOOLS), the original tarproc's option table
CLI_BASE_USES = {"tarproc.cli", "tarproc.cli.original"}


def test_the_tools_base_is_layered():
    """options <- tool <- app: the option declarations know no run, the
    per-run Tool knows no app, and the base imports no tool (no cycle)."""
    for i, module in enumerate(CLI_BASE):
        cli = {t for t in runtime_imports(MODULES[module]) if t.startswith("tarproc.cli")}
        allowed = set(CLI_BASE[:i]) | CLI_BASE_USES
        assert cli <= allowed, f"{module} imports {sorted(cli - allowed)}"
    assert {"tarproc.cli.options", "tarproc.cli.tool"} <= runtime_imports(MODULES["tarproc.cli.app"])


SIGNAL_CALLS = {"signal", "pthread_sigmask", "siginterrupt", "set_wakeup_fd"}
#: the one home of signal handling in the library; the tools install theirs through tarproc.cli
SIGNAL_HOME = {"tarproc.guard"}


def signal_calls(path: Path) -> list[int]:
    tree = ast.parse(path.read_text())
    return [
        node.lineno for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
        and node.func.attr in SIGNAL_CALLS and isinstance(node.func.value, ast.Name) and node.func.value.id == "signal"
    ]


def test_only_the_guard_installs_signal_handlers():
    """No library module but :mod:`tarproc.guard` changes signal dispositions
    or masks (issue 16: a library without process-wide side effects)."""
    assert signal_calls(MODULES["tarproc.guard"]), "the scan finds the guard's own calls"
    offenders = [f"{m}:{line}" for m, p in LIBRARY.items() if m not in SIGNAL_HOME for line in signal_calls(p)]
    assert not offenders, offenders


MUTATORS = {"set", "add", "append", "appendleft", "clear", "discard", "extend", "insert", "pop", "popitem", "popleft",
            "remove", "setdefault", "update"}
CONTAINERS = {"dict", "list", "set", "deque", "defaultdict", "OrderedDict", "Counter", "WeakSet", "WeakValueDictionary",
              "Event"}


def module_state(path: Path) -> list[str]:
    """Module-level names that hold run state: bound to a mutable container
    and mutated in the module, or rebound by a ``global`` statement."""
    tree = ast.parse(path.read_text())
    containers = set()
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        value = getattr(node, "value", None)
        mutable = isinstance(value, (ast.Dict, ast.List, ast.Set, ast.DictComp, ast.ListComp, ast.SetComp)) or (
            isinstance(value, ast.Call) and getattr(value.func, "id", getattr(value.func, "attr", None)) in CONTAINERS)
        if mutable:
            containers.update(t.id for t in targets if isinstance(t, ast.Name))
    state = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Global):
            state.update(node.names)
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in MUTATORS
              and isinstance(node.func.value, ast.Name) and node.func.value.id in containers):
            state.add(node.func.value.id)
        elif isinstance(node, (ast.Assign, ast.AugAssign, ast.Delete)):
            for t in getattr(node, "targets", None) or [node.target]:
                if isinstance(t, ast.Subscript) and isinstance(t.value, ast.Name) and t.value.id in containers:
                    state.add(t.value.id)
    return sorted(state)


def test_the_state_check_finds_state():
    source = "_RUNNING = set()\nTABLE = {'a': 1}\ndef f(p):\n    _RUNNING.add(p)\n    global line_writer\n    line_writer = p\n"
    path = REPO / "tests" / "_state_probe.py"
    try:
        path.write_text(source)
        assert module_state(path) == ["_RUNNING", "line_writer"]
    finally:
        path.unlink()


#: what is per process by nature, or caches whose content is the same for every run (a pure function's memo)
CACHES = {
    # the runs open in this process, so that a signal handler (process-wide by nature) marks each one's
    # own record; a run's record is dropped when it ends (issue 16: no interrupt outlives its run)
    "tarproc.errors._OPEN_RECORDS",
    "tarproc.io.spool._made",  # the process that made sure the spool directory exists (one per process)
    "tarproc.io.tario._FIXED",  # header fields by (mode, mtime, typeflag): a memo of a pure function, at most 64
    "tarproc.ops.describe._PILImage",  # Pillow, imported on first use
}


@pytest.mark.parametrize("module", sorted(LIBRARY))
def test_no_module_level_run_state(module):
    state = [name for name in module_state(LIBRARY[module]) if f"{module}.{name}" not in CACHES]
    assert not state, f"{module} keeps run state at module level: {state}"
