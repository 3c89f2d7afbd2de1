"""Speed and memory benchmarks; ``python -m benchmarks`` runs them and rewrites BENCHMARKS.md.

A benchmark is any module in this package (not starting with ``_``) that defines:

* ``NAME``: short id used on the command line and as the section key in BENCHMARKS.md;
* ``TITLE``: the section heading;
* ``run(quick: bool) -> str``: runs the measurements and returns the section's markdown
  (ratios measured side by side in the same run, plus the machine they ran on).

Register a new benchmark by adding such a module; the runner finds it by itself.
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType


def discover() -> dict[str, ModuleType]:
    """NAME -> module of every benchmark in this package, in module-name order."""
    found: dict[str, ModuleType] = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        if all(hasattr(module, attr) for attr in ("NAME", "TITLE", "run")):
            found[module.NAME] = module
    return found
