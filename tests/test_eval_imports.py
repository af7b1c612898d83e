"""Imports inside evaluation/ point one way (no circles, lazy function-level imports included) and never
reach up into orchestration (layers: data <- models <- evaluation <- orchestration)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import evaluation

ROOT = Path(evaluation.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> set[str]:
    """Every module named by an import statement anywhere in the file, function bodies included."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)  # `from pkg import submodule`
    return names


def evaluation_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in ROOT.rglob("*.py")}
    packages = {m for m, p in files.items() if p.name == "__init__.py"}  # lazy, import nothing themselves
    return {m: {n for n in imported_modules(p) if n in files and n not in packages and n != m}
            for m, p in files.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_graph_sees_function_level_imports():
    graph = evaluation_graph()
    assert "evaluation.train_estimator" in graph["evaluation.estimator_cache"]  # imported inside ensure_estimator
    assert "evaluation.estimator_cache" in graph["evaluation.reference"]  # imported inside main()


def test_no_import_circle_inside_evaluation():
    cycle = find_cycle(evaluation_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_the_estimator_imports_neither_its_trainer_nor_its_cache():
    graph = evaluation_graph()
    assert not graph["evaluation.estimator"] & {"evaluation.train_estimator", "evaluation.estimator_cache"}


def test_evaluation_never_imports_orchestration():
    offenders = {module_name(p): sorted(n for n in imported_modules(p) if n.split(".")[0] == "orchestration")
                 for p in ROOT.rglob("*.py")}
    assert not {m: o for m, o in offenders.items() if o}


def test_a_trial_process_loads_no_metric_or_augmentation_library_it_does_not_run():
    """A sweep's trial reads the data un-augmented and receives and merges scores from the evaluation actors: it
    imports neither Albumentations nor torchmetrics nor the estimator's transformers model (~1 s of CPU in every
    such process); building an augmentation loads Albumentations where it is asked for."""
    code = """
import pickle, sys
import torch
from data.dataset import FaceDataset
from evaluation.scorer import Scorer, ScoreState
state = pickle.loads(pickle.dumps(ScoreState({"est_acc": {"correct": torch.ones(5)}})))
assert Scorer.merge([state, state]).parts["est_acc"]["correct"].tolist() == [2.0] * 5
heavy = ("albumentations", "torchmetrics", "transformers.modeling_utils")
print(*[m for m in heavy if m in sys.modules])
from data.augment import build_augmentation
build_augmentation("study")
print("albumentations" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT.parent, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.splitlines() == ["", "True"], out.stdout
