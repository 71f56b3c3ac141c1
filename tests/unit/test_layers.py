"""The import layering holds: every shared concept has one room that daemons import downward.

Parses every module of overlay/, dnsd/ and cni/ with ``ast`` (all imports: top
level, inside functions and under ``TYPE_CHECKING``) and fails on:

* a file-level import cycle;
* a package-level cycle. Units are the packages (``overlay.lease``, ``overlay.store``,
  ``overlay.store.embedded``, ``overlay.sched``, ``dnsd``, ``cni``, any new one),
  except that each module directly in ``overlay/`` is a unit of its own: that
  directory holds the shared floor (flags, clock, errors, metrics, config, ipnet)
  next to flanneld's shell (daemon, health), and a sub-package importing the floor
  while flanneld's shell imports the sub-package is not a cycle;
* dnsd, cni or overlay.sched importing overlay.cli (flanneld's and weftctl's CLI);
* the store client floor (overlay.store's own modules) importing overlay.store.embedded;
* the CNI plugin importing pyroute2, grpc, aetcd or overlay.store, statically or
  (checked by importing it in a fresh interpreter) at run time.

Run alone: ``.venv/bin/python -m pytest tests/unit/test_layers.py -q``.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterable, Mapping
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TOP = ("overlay", "dnsd", "cni")
CNI_FORBIDDEN = ("pyroute2", "grpc", "aetcd", "overlay.store")


@cache
def _modules() -> Mapping[str, Path]:
    mods: dict[str, Path] = {}
    for top in TOP:
        for f in sorted((ROOT / top).rglob("*.py")):
            parts = list(f.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            mods[".".join(parts)] = f
    return mods


def _imports(name: str, path: Path) -> set[str]:
    """Every module ``name`` imports (absolute names; ``from p import m`` gives ``p.m``)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.add(mod)
            out.update(f"{mod}.{alias.name}" for alias in node.names)
    return out


@cache
def graph() -> Mapping[str, frozenset[str]]:
    """module -> the project modules it imports (external imports dropped)."""
    mods = _modules()
    return {name: frozenset(m for m in imported if m in mods and m != name)
            for name, imported in all_imports().items()}


@cache
def all_imports() -> Mapping[str, frozenset[str]]:
    mods = _modules()
    return {name: frozenset(_imports(name, path)) for name, path in mods.items()}


def unit(module: str) -> str:
    """The package-level unit of ``module`` (see the module docstring)."""
    path = _modules()[module]
    if path.name == "__init__.py":
        return module
    parent = module.rpartition(".")[0]
    return module if parent == "overlay" else parent


def cycles(edges: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges.get(root, ()))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(edges.get(w, ())))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
    return found


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_no_file_cycles() -> None:
    assert cycles(graph()) == []


def test_no_package_cycles() -> None:
    units: dict[str, set[str]] = {}
    for a, bs in graph().items():
        units.setdefault(unit(a), set())
        for b in bs:
            ua, ub = unit(a), unit(b)
            # a package's __init__ and its modules are one unit; a child may use its parent
            if ua != ub and not _within(ua, ub):
                units[ua].add(ub)
    assert cycles(units) == []


def _violations(importers: Iterable[str], forbidden: Iterable[str],
                exact: bool = False) -> list[str]:
    imports = all_imports()
    mine = [m for m in imports
            if any(m == p if exact else _within(m, p) for p in importers)]
    return sorted(f"{m} imports {i}" for m in mine for i in imports[m]
                  if any(_within(i, f) for f in forbidden))


def test_dnsd_cni_and_sched_do_not_import_the_cli() -> None:
    assert _violations(("dnsd", "cni", "overlay.sched"), ("overlay.cli",)) == []


def test_store_client_floor_does_not_import_the_embedded_server() -> None:
    floor = [m for m in graph() if unit(m) == "overlay.store"]
    assert "overlay.store.memory" in floor and "overlay.store.client" in floor
    assert _violations(floor, ("overlay.store.embedded",), exact=True) == []


def test_cni_plugin_stays_import_light() -> None:
    assert _violations(("cni",), CNI_FORBIDDEN) == []
    probe = ("import sys, cni.main, cni.commands, cni.skel\n"
             f"print(sorted(m for m in sys.modules if m.split('.')[0] in "
             f"{('pyroute2', 'grpc', 'aetcd')} or m.startswith('overlay.store')))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True,
                         text=True, timeout=60, check=True).stdout
    assert out.strip() == "[]"


def test_the_checker_sees_cycles() -> None:
    assert cycles({"a": ["b"], "b": ["c"], "c": ["a"], "d": ["a"]}) == [["a", "b", "c"]]
    assert cycles({"a": ["b"], "b": []}) == []
