"""No import circles between the modules of any workspace package.

A circle (``a`` imports ``b`` and ``b`` imports ``a``, at module level or inside a function) means
two modules are one job split in two files; grimp reads the imports statically.
"""

from __future__ import annotations

import sys

import grimp
import pytest

PACKAGES = [
    "stformer_data",
    "stformer_collate",
    "stformer_train",
    "stformer_dist",
    "stformer_tune",
    "stformer_cli",
    "stformer_tune_app",
]


def import_cycles(package: str) -> list[tuple[str, ...]]:
    """Each circle inside ``package`` as one chain ``(a, ..., a)``, shortest first."""
    graph = grimp.build_graph(package, cache_dir=None)
    seen, cycles = set(), []
    for module in sorted(graph.modules):
        for imported in sorted(graph.find_modules_directly_imported_by(module)):
            if not imported.startswith(package) or imported == module:
                continue
            back = graph.find_shortest_chain(importer=imported, imported=module)
            if back:
                key = frozenset((module, *back))
                if key not in seen:
                    seen.add(key)
                    cycles.append((module, *back))
    return sorted(cycles, key=len)


@pytest.mark.parametrize("package", PACKAGES)
def test_no_import_cycles(package):
    assert import_cycles(package) == []


def test_the_check_finds_a_cycle(tmp_path, monkeypatch):
    pkg = tmp_path / "circle_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from circle_pkg.b import B\nA = 1\n")
    (pkg / "b.py").write_text(
        "B = 2\n\ndef late():\n    from circle_pkg.a import A\n    return A\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "circle_pkg", raising=False)
    assert import_cycles("circle_pkg") == [("circle_pkg.a", "circle_pkg.b", "circle_pkg.a")]
