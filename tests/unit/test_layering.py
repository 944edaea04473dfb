"""House rule: `reptile/` imports only torch and numpy; imports point api → service → workers."""

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STDLIB_OK = set(sys.stdlib_module_names)
ALLOWED = {
    "reptile": {"torch", "numpy", "reptile"},
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_reptile_imports_only_torch_and_numpy() -> None:
    for path in (ROOT / "reptile").rglob("*.py"):
        extra = _imports(path) - ALLOWED["reptile"] - STDLIB_OK
        assert not extra, f"{path.relative_to(ROOT)} imports {sorted(extra)}"


def test_lower_layers_never_import_upper_ones() -> None:
    upper = {
        "workers": {"service", "api"},
        "service": {"api"},
        "reptile": {"workers", "service", "api"},
    }
    for package, forbidden in upper.items():
        for path in (ROOT / package).rglob("*.py"):
            bad = _imports(path) & forbidden
            assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"
