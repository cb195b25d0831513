"""What each workspace package really pulls in: distributions and installed size of its closure.

For every stformer package the requirements are followed transitively through the installed
environment (``importlib.metadata``, markers evaluated for this interpreter, extras followed where
a requirement names them), and the installed size of every distribution in the closure is summed
from its ``RECORD`` (the files pip / uv installed). The figures are those of the environment the
script runs in (here: ``uv sync`` on Linux x86-64, CPU torch); a CUDA torch is several GB more.

    uv run python tools/dependency_footprint.py           # a table (the README's)
    uv run python tools/dependency_footprint.py --json    # one JSON line
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from importlib import metadata

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

PACKAGES = (
    "stformer-data",
    "stformer-collate",
    "stformer-train",
    "stformer-dist",
    "stformer-tune",
    "stformer-cli",
    "stformer-tune-app",
)


def _distributions() -> dict[str, metadata.Distribution]:
    found: dict[str, metadata.Distribution] = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            found.setdefault(canonicalize_name(name), dist)
    return found


def closure(root: str, dists: dict[str, metadata.Distribution]) -> set[str]:
    """The canonical names of ``root`` and every distribution it requires, transitively."""
    seen: set[str] = set()
    todo: list[tuple[str, frozenset[str]]] = [(canonicalize_name(root), frozenset())]
    expanded: set[tuple[str, frozenset[str]]] = set()
    while todo:
        name, extras = todo.pop()
        if (name, extras) in expanded:
            continue
        expanded.add((name, extras))
        dist = dists.get(name)
        if dist is None:
            continue  # required only on another platform / not installed
        seen.add(name)
        for line in dist.requires or ():
            req = Requirement(line)
            envs = [{"extra": e} for e in extras] or [{"extra": ""}]
            if req.marker is not None and not any(req.marker.evaluate(env) for env in envs):
                continue
            todo.append((canonicalize_name(req.name), frozenset(req.extras)))
    return seen


def installed_bytes(dist: metadata.Distribution) -> int:
    total = 0
    for f in dist.files or ():
        if f.size is not None:
            total += int(f.size)
            continue
        try:
            total += os.path.getsize(f.locate())
        except OSError:
            pass
    return total


def _gpu_stack(name: str) -> bool:
    """torch's CUDA runtime: the ``nvidia-*`` / ``cuda-*`` wheels and triton."""
    return name.startswith(("nvidia-", "cuda-")) or name == "triton"


def footprint() -> list[dict[str, object]]:
    dists = _distributions()
    missing = [p for p in PACKAGES if canonicalize_name(p) not in dists]
    if missing:
        sys.exit(f"not installed in this environment: {missing}; run `uv sync` first")
    rows = []
    for package in PACKAGES:
        names = closure(package, dists)
        third_party = sorted(n for n in names if not n.startswith("stformer"))
        size = sum(installed_bytes(dists[n]) for n in third_party)
        gpu = [n for n in third_party if _gpu_stack(n)]
        torch = sum(installed_bytes(dists[n]) for n in gpu + ["torch"] if n in third_party)
        rows.append(
            {
                "package": package,
                "distributions": len(third_party),
                "installed_mb": round(size / 1e6),
                "torch_and_cuda_mb": round(torch / 1e6),
                "cuda_distributions": len(gpu),
                "largest": sorted(third_party, key=lambda n: -installed_bytes(dists[n]))[:4],
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    args = parser.parse_args(argv)
    rows = footprint()
    if args.json:
        print(json.dumps(rows))
        return 0
    head = f"{'package':<18} {'distributions':>13} {'(CUDA)':>6} {'installed MB':>12} {'torch+CUDA MB':>13}"
    print(head + "  largest")
    for r in rows:
        print(
            f"{r['package']:<18} {r['distributions']:>13} {r['cuda_distributions']:>6} "
            f"{r['installed_mb']:>12} {r['torch_and_cuda_mb']:>13}  " + ", ".join(r["largest"])
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
