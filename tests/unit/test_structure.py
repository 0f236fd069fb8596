"""The architecture's rules, checked on the source: who imports whom."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in ("orchestrator", "runtimes"):
        for f in (ROOT / pkg).rglob("*.py"):
            if "_pb2" in f.name:
                continue
            parts = list(f.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = f
    return out


MODULES = _modules()


def _imports(name: str) -> set[str]:
    """Every project module ``name`` imports, type-checking imports and lazy imports included."""
    path = MODULES[name]
    is_pkg = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = name.split(".") if is_pkg else name.split(".")[:-1]
                pkg = pkg[: len(pkg) - (node.level - 1)]
                base = ".".join(pkg + ([node.module] if node.module else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        for target in targets:
            parts = target.split(".")
            while parts and ".".join(parts) not in MODULES:
                parts.pop()
            if parts and ".".join(parts) != name and not name.startswith(".".join(parts) + "."):
                found.add(".".join(parts))
    return found


GRAPH = {name: _imports(name) for name in MODULES}


def test_no_import_cycles() -> None:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in GRAPH:
        if v not in index:
            visit(v)
    assert cycles == []


def test_host_imports_only_the_wire_kernel_from_the_container_half() -> None:
    for name, deps in GRAPH.items():
        if name.startswith("orchestrator"):
            foreign = sorted(d for d in deps if d.startswith("runtimes") and not d.startswith("runtimes.wire"))
            assert foreign == [], f"{name} imports {foreign}"


def test_wire_kernel_imports_nothing_else_of_mlbridge() -> None:
    for name, deps in GRAPH.items():
        if name.startswith("runtimes.wire"):
            assert all(d.startswith("runtimes.wire") or d == "runtimes" for d in deps), (name, deps)


def test_runtimes_never_import_the_orchestrator() -> None:
    for name, deps in GRAPH.items():
        if name.startswith("runtimes"):
            assert not [d for d in deps if d.startswith("orchestrator")], name


def test_domain_service_knows_no_policy_edge_or_audit() -> None:
    for name in ("orchestrator.service", "orchestrator.pool", "orchestrator.calls", "orchestrator.claims",
                 "orchestrator.worker", "orchestrator.registry"):
        bad = sorted(d for d in GRAPH[name] if d.startswith(("orchestrator.policy", "orchestrator.edge",
                                                              "orchestrator.audit", "orchestrator.compat",
                                                              "orchestrator.api", "orchestrator.egress")))
        assert bad == [], f"{name} imports {bad}"


def test_core_names_no_backend() -> None:
    """Backends are plug-ins: no core module imports a concrete backend or compares backend names."""
    core = [n for n in MODULES if n.startswith("orchestrator") and not n.startswith("orchestrator.backends")]
    for name in core:
        deps = GRAPH[name]
        assert not [d for d in deps if d.startswith(("orchestrator.backends.docker",
                                                      "orchestrator.backends.process"))], name
        text = MODULES[name].read_text()
        for literal in ('== "docker"', '== "process"', '!= "docker"', '!= "process"'):
            assert literal not in text, f"{name} compares backend names: {literal}"
