"""The layers' rules, checked on the import graph (grimp builds it from the source, every
import counted, including those inside functions and under ``TYPE_CHECKING``).

- No import cycle: not between modules, not between the packages directly under ``fhirgate``.
- ``fhirgate.domain`` imports nothing of fhirgate outside itself, and only the standard library.
- The OAuth core (``fhirgate.oauth``) reaches neither SQLAlchemy nor Redis nor the storage and
  web layers, not even through another module: it depends on the contracts of
  ``fhirgate.domain.stores``, which storage implements.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping

import grimp
import pytest

ROOT = "fhirgate"
#: What the OAuth core must not reach, directly or through any chain of imports.
CORE_FORBIDDEN = ("sqlalchemy", "redis", "asyncpg", "starlette", "fhirgate.storage", "fhirgate.web")


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return grimp.build_graph(ROOT, include_external_packages=True, cache_dir=None)


def _ours(module: str) -> bool:
    return module == ROOT or module.startswith(ROOT + ".")


def _package(module: str) -> str:
    """The package directly under ``fhirgate`` that ``module`` belongs to."""
    return ".".join(module.split(".")[:2])


def _cycles(edges: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan's algorithm,
    iterative): each is a set of modules that import each other in a ring."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in sorted(edges):
        if start in index:
            continue
        work = [(start, iter(sorted(edges.get(start, ()))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, targets = work[-1]
            for target in targets:
                if target not in index:
                    index[target] = low[target] = len(index)
                    stack.append(target)
                    on_stack.add(target)
                    work.append((target, iter(sorted(edges.get(target, ())))))
                    break
                if target in on_stack:
                    low[node] = min(low[node], index[target])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return found


def _module_edges(graph: grimp.ImportGraph) -> dict[str, set[str]]:
    return {
        module: {m for m in graph.find_modules_directly_imported_by(module) if _ours(m)}
        for module in graph.modules
        if _ours(module)
    }


def test_the_cycle_finder_finds_a_ring_and_nothing_in_a_tree() -> None:
    ring = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(ring) == [["a", "b", "c"]]
    assert _cycles({"a": {"b", "c"}, "b": {"c"}, "c": set()}) == []


def test_no_module_imports_itself_through_others(graph: grimp.ImportGraph) -> None:
    assert _cycles(_module_edges(graph)) == []


def test_no_package_imports_itself_through_others(graph: grimp.ImportGraph) -> None:
    packages: dict[str, set[str]] = {}
    for module, targets in _module_edges(graph).items():
        mine = _package(module)
        packages.setdefault(mine, set()).update(
            _package(t) for t in targets if _package(t) != mine and t != ROOT
        )
    assert _cycles(packages) == []


def test_the_domain_imports_only_itself_and_the_standard_library(
    graph: grimp.ImportGraph,
) -> None:
    outside = {
        (module, imported)
        for module in graph.find_descendants(f"{ROOT}.domain")
        for imported in graph.find_modules_directly_imported_by(module)
        if not imported.startswith(f"{ROOT}.domain")
        and imported.split(".")[0] not in sys.stdlib_module_names
    }
    assert outside == set()


@pytest.mark.parametrize("forbidden", CORE_FORBIDDEN)
def test_the_oauth_core_reaches_no_storage_library_nor_the_web(
    graph: grimp.ImportGraph, forbidden: str
) -> None:
    chains = graph.find_shortest_chains(importer=f"{ROOT}.oauth", imported=forbidden)
    assert sorted(chains) == []
