"""``python -m benchmarks [NAME ...] [--quick] [--list] [--output FILE] [--no-write]``.

Runs the named benchmarks (all by default) and rewrites only their own sections of
BENCHMARKS.md, between ``<!-- benchmark:NAME -->`` and ``<!-- /benchmark:NAME -->``; the rest
of the file, including other benchmarks' sections, is kept as it is.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

from benchmarks import discover
from common import atomic

DEFAULT_OUTPUT = Path(__file__).resolve().parents[1] / "BENCHMARKS.md"
HEADER = (
    "# Benchmarks\n\n"
    "Written by `python -m benchmarks` (`make bench`); each section is rewritten only by its own\n"
    "benchmark. Speed-ups are ratios measured side by side in one run on the machine named in\n"
    "the section, so they compare like with like even where absolute numbers vary.\n"
)


def replace_section(document: str, name: str, title: str, body: str) -> str:
    """``document`` with the section of ``name`` replaced (or appended) by ``body``."""
    start, end = f"<!-- benchmark:{name} -->", f"<!-- /benchmark:{name} -->"
    section = f"{start}\n## {title}\n\n{body.strip()}\n{end}"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.DOTALL)
    if pattern.search(document):
        return pattern.sub(lambda _: section, document, count=1)
    document = document.rstrip() + "\n" if document.strip() else HEADER
    return f"{document}\n{section}\n"


def main(argv: list[str] | None = None) -> int:
    available = discover()
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"benchmarks to run (default: all of {list(available)})")
    parser.add_argument("--quick", action="store_true", help="fewer repeats and sizes (a smoke run)")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="markdown file to update")
    parser.add_argument("--no-write", action="store_true", help="print the sections instead of writing them")
    args = parser.parse_args(argv)
    if args.list:
        for name, module in available.items():
            print(f"{name:16s} {module.TITLE}")
        return 0
    unknown = [n for n in args.names if n not in available]
    if unknown:
        print(f"benchmarks: error: unknown benchmark(s) {unknown}; choose from {list(available)}", file=sys.stderr)
        return 2
    for name in args.names or list(available):
        module = available[name]
        print(f"benchmarks: running {name} ...", file=sys.stderr, flush=True)
        started = time.perf_counter()
        body = module.run(quick=args.quick)
        print(f"benchmarks: {name} took {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
        if body is None:  # it cannot run here (gpu_mfu without CUDA): its section stays as it is
            continue
        if args.no_write:
            print(f"## {module.TITLE}\n\n{body.strip()}\n")
            continue
        current = args.output.read_text() if args.output.is_file() else ""
        atomic.write_text(args.output, replace_section(current, name, module.TITLE, body))
    return 0


if __name__ == "__main__":
    sys.exit(main())
