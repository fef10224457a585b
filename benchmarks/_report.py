"""What every benchmark does at the end: a JSON report with the machine's facts, written atomically."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import platform
import shutil
import tempfile
from pathlib import Path

import torch

from l2d.storage import Location


def write_report(path: str, name: str, rows: list[dict], **settings) -> None:
    """Write ``{"benchmark": name, **settings, machine facts, "rows": rows}`` to ``path`` (temp file + rename)."""
    report = {
        "benchmark": name,
        **settings,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "rows": rows,
    }
    Location.parse(path).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {path}")


ROOT = Path(__file__).resolve().parents[1]


def add_sweep_arguments(parser, name: str) -> None:
    """``--spec`` (default: the quickstart), ``--storage`` and ``--out`` (``benchmarks/results/<name>.json``)."""
    parser.add_argument("--spec", default=str(ROOT / "search_spaces" / "quickstart.yaml"))
    parser.add_argument(
        "--storage",
        default=None,
        help="sweep storage (default: a temporary folder, deleted at the "
        "end, given the teachers the spec's storage already has)",
    )
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / f"{name}.json"))


def spec_label(path: str) -> str:
    """A spec's path relative to the repository when it is inside it."""
    resolved = Path(path).resolve()
    return str(resolved.relative_to(ROOT)) if resolved.is_relative_to(ROOT) else path


@contextlib.contextmanager
def sweep_storage(spec, storage: str | None):
    """The spec with its storage moved to ``storage``, or to a temporary folder deleted on exit (seeded with the
    teachers of the spec's own storage, so that no benchmark retrains a teacher that exists)."""
    work = tempfile.mkdtemp(prefix="l2d-benchmark-")
    try:
        if storage is None and spec.teacher_store.is_local and spec.teacher_store.is_dir():
            shutil.copytree(spec.teacher_store.path, Path(work) / "teachers")
        yield dataclasses.replace(spec, storage=storage or work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


README = ROOT / "README.md"
DOCS = ROOT / "docs"


def _page_with(marker: str) -> Path:
    """The page (README.md or a docs/ page) that holds ``marker``."""
    for page in [README, *sorted(DOCS.glob("*.md"))]:
        if page.is_file() and marker in page.read_text():
            return page
    raise SystemExit(f"error: neither README.md nor docs/*.md has a {marker} block")


def readme_block(name: str, lines: list[str], write: bool) -> str:
    """The block between ``<!-- bench:NAME:start -->`` and ``<!-- bench:NAME:end -->`` (in README.md or a page of
    docs/): ``lines`` fenced as code; returns it and, with ``write``, puts it there (the markers must exist)."""
    text = "```\n" + "\n".join(lines) + "\n```"
    start, end = f"<!-- bench:{name}:start -->", f"<!-- bench:{name}:end -->"
    if write:
        page = _page_with(start)
        content = page.read_text()
        if end not in content:
            raise SystemExit(f"error: {page.relative_to(ROOT)} has {start} but no {end}")
        head, rest = content.split(start, 1)
        tail = rest.split(end, 1)[1]
        page.write_text(f"{head}{start}\n{text.strip()}\n{end}{tail}")
        print(f"{page.relative_to(ROOT)}: block {name} rewritten")
    return text


def add_report_arguments(parser, name: str) -> None:
    """``--out`` (``benchmarks/results/<name>.json``), ``--summarize JSON`` and ``--readme``."""
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / f"{name}.json"))
    parser.add_argument("--summarize", metavar="JSON", help="print the README block of a saved report")
    parser.add_argument(
        "--readme", action="store_true", help="with --summarize: write the block into its page (README.md or docs/)"
    )


def parse_report_args(parser, argv: list[str] | None, summarize):
    """Parse ``argv`` (``args.argv`` keeps it for :func:`command_line`). With ``--summarize``: print
    ``summarize(report, args.readme)`` of that saved report and return None."""
    import sys

    args = parser.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else list(argv)
    if args.summarize:
        print(summarize(json.loads(Path(args.summarize).read_text()), args.readme))
        return None
    return args


def command_line(script: str, argv: list[str]) -> str:
    """The command that made a report, as the README shows it above the report's table."""
    import shlex

    return shlex.join([".venv/bin/python", f"benchmarks/{script}", *argv])
