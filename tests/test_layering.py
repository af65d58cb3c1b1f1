"""The package's modules import each other in one direction: no cycle at import time."""

import ast
from pathlib import Path

import wav2genre_cache

PACKAGE = Path(wav2genre_cache.__file__).parent


def module_imports() -> dict[str, set[str]]:
    """Each module's package imports made when it is imported (not those inside functions)."""
    graph = {}
    for path in PACKAGE.glob("*.py"):
        deps = set()
        for node in ast.parse(path.read_text()).body:  # module level only
            if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module:
                deps.add(node.module.split(".")[0])
        graph[path.stem] = deps - {path.stem}
    return graph


def test_no_module_imports_itself_through_others():
    graph = module_imports()
    done, path = set(), []

    def visit(module: str) -> None:
        assert module not in path, " -> ".join([*path[path.index(module) :], module])
        if module in done or module not in graph:
            return
        path.append(module)
        for dep in sorted(graph[module]):
            visit(dep)
        path.pop()
        done.add(module)

    for module in sorted(graph):
        visit(module)


def test_inference_imports_neither_training_stage():
    graph = module_imports()

    def reach(module: str, seen: set[str]) -> set[str]:
        for dep in graph.get(module, ()):
            if dep not in seen:
                seen.add(dep)
                reach(dep, seen)
        return seen

    for module in ("predict", "server", "bundles"):
        training = {"embed", "cache", "train", "datasets", "features", "finetune"}
        stages = reach(module, set()) & (training | {"finetune_checkpoint"})
        assert stages == set(), (module, stages)
