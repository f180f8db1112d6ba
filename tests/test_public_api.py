"""Feature apps use the runner only through its public API: tasks.exceptions, tasks.progress,
@schedule from tasks.schedules, enqueue_many from tasks.backends (a fan-out in one INSERT), and
django.tasks.

Read from the source with `ast`, so an import inside a function counts too.
"""

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FEATURE_APPS = ["accounts", "chat", "notifications", "reports"]
PUBLIC_MODULES = {"tasks.exceptions", "tasks.progress"}
PUBLIC_NAMES = {"tasks.schedules:schedule", "tasks.backends:enqueue_many"}


def runner_references(path: Path) -> Iterator[tuple[int, str]]:
    """(line, what) for every import from the `tasks` app, and every string naming its model."""
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "tasks":
                    yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module.split(".")[0] == "tasks":
            for alias in node.names:
                # `from tasks import progress` imports a module; `from tasks.progress import cancel` a name.
                yield node.lineno, f"tasks.{alias.name}" if node.module == "tasks" else f"{node.module}:{alias.name}"
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.lower() == "tasks.taskrecord":
            yield node.lineno, node.value


def is_public(reference: str) -> bool:
    module, _, name = reference.partition(":")
    return (module in PUBLIC_MODULES and not name.startswith("_")) or reference in PUBLIC_NAMES


@pytest.mark.parametrize("app", FEATURE_APPS)
def test_feature_apps_use_only_the_runners_public_api(app):
    private = [
        f"{path.relative_to(ROOT)}:{line} {reference}"
        for path in sorted((ROOT / app).rglob("*.py"))
        if "migrations" not in path.parts
        for line, reference in runner_references(path)
        if not is_public(reference)
    ]
    assert private == []
