"""Mutation testing of the safety code: does every guard fail a test when it breaks?

mutmut (configured in ``[tool.mutmut]`` of pyproject.toml) rewrites each function of the safety modules in many small
ways (a comparison flipped, a constant changed, a call's argument dropped...) and runs, for each mutant, the fast tests
that cover that function. A mutant that no test kills is a change to a guard that every test lets through. This script
runs mutmut for the modules asked (all of :data:`MODULES` by default), sorts the survivors into those with a written
reason (:data:`REASONS`: an equivalent mutant, or a change of log text or file layout only) and those without, prints
a table, writes ``benchmarks/results/mutants.json`` and the block of docs/development.md between its markers.

    python benchmarks/mutants.py                       # every module (hours on 2 cores)
    python benchmarks/mutants.py --modules sweeps/folder/trust.py sweeps/folder/marker.py
    python benchmarks/mutants.py --report-only         # the table again from mutmut's last results

Slow, so not part of CI (``make mutants``); its last report is committed.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "mutants.json"
DOCS = ROOT / "docs" / "development.md"
START, END = "<!-- mutants:start -->", "<!-- mutants:end -->"
MUTMUT = [sys.executable, "-m", "mutmut"]

#: The safety modules: paths and URIs (atomic writes, credentials, output targets), the pickles' signatures, the lease,
#: the sweep folder's marker and deletion, the results rebuild, the spec checks and the SQL sandbox.
MODULES = [
    "sweeps/folder/trust.py",
    "sweeps/folder/marker.py",
    "l2d/storage.py",
    "sweeps/folder/lease.py",
    "sweeps/results/writer.py",
    "sweeps/core/checks.py",
    "sweeps/results/reader.py",
]

#: Survivors with a written reason: (module, text of the line the mutant changes or adds, or a tuple of such texts,
#: why no test needs to kill it).
REASONS = [
    (
        "sweeps/folder/trust.py",
        "json.dumps(self.entries",
        "the layout of signatures.json (indent, key order): it is read as JSON, and every test compares its content",
    ),
    ("sweeps/folder/trust.py", "logger.info(", "the text of a log line"),
    (
        "sweeps/folder/trust.py",
        "self.entries.get(relative, ",
        "equivalent: a missing signature's stand-in ('' or any other "
        "string that is not 64 hex digits) never equals an HMAC",
    ),
    ("sweeps/folder/trust.py", "folder.list() if", "equivalent: Location.list() of a missing folder is already empty"),
    (
        "sweeps/folder/trust.py",
        "self._seen",
        "the size-and-time cache that skips re-reading unchanged files: a mutant re-reads "
        "(slower) and signs the same digest",
    ),
    ("sweeps/folder/trust.py", "secrets.token_bytes(None)", "equivalent: secrets' default is 32 bytes"),
    (
        "sweeps/folder/trust.py",
        'else b"XXXX"',
        "equivalent: any stand-in shorter than 32 bytes for a key file that is not a file is refused the same way",
    ),
    ("sweeps/folder/marker.py", "logger.", "the text of a log line"),
    ("sweeps/folder/marker.py", "json.dumps(marker, indent", "the layout of the marker file: it is read as JSON"),
    ("sweeps/folder/marker.py", "'.join(RESERVED)", "the wording of a message (the refusal itself is tested)"),
    (
        "sweeps/folder/marker.py",
        '"sweep_id": None, "damaged": True}',
        "the damaged stand-in's other fields: only `damaged` and "
        "`sweep_id` are read, and a driver writes a whole marker before anything else",
    ),
    (
        "l2d/storage.py",
        ('json.dumps({"tool": "l2d-sweep", "kind": kind', "json.dumps(None)"),
        "the output marker's content: only its presence is read (check_output)",
    ),
    (
        "l2d/storage.py",
        'kind: str = "',
        "the default label of prepare_output's messages and marker (callers name their own; tests check the one given)",
    ),
    (
        "l2d/storage.py",
        ("while depth <= 64", "while depth < 65"),
        "the walk's bound: one folder more checked is harmless",
    ),
    (
        "l2d/storage.py",
        ("if above == folder and (not above.is_local", "if above == folder or (above.is_local"),
        "equivalent: the walk up also ends at its bound, and a root is its own parent",
    ),
    (
        "l2d/storage.py",
        (
            '.split("/", )[0]',
            '.split("/", 2)[0]',
            '.split("?", )[0]',
            '.split("?", 2)[0]',
            "split('=', )[0]",
            "split('=', 2)[0]",
            'text.split("://", )[0]',
            'text.split("://", 2)[0]',
        ),
        "equivalent: the first piece of a split does not depend on how many more splits follow",
    ),
    (
        "l2d/storage.py",
        ('value.split("://", )[1]', 'value.split("://", 2)[1]'),
        "equivalent: the value's host part is cut at its first '/' next: what a second '://' splits never reaches it",
    ),
    ("l2d/storage.py", 'if "?" in rest else "XXXX"', "equivalent: the stand-in query 'XXXX' holds no secret word"),
    (
        "l2d/storage.py",
        ("if (self.is_local) and False else", "if (self.is_local) or True else"),
        "equivalent on POSIX: an absolute path joined by os.path.join and by '/' is the same string",
    ),
    (
        "l2d/storage.py",
        ('what: str = "XXstorageXX"', 'what: str = "STORAGE"'),
        "the default label of parse's messages: every caller that can be wrong names its own",
    ),
    (
        "l2d/storage.py",
        'self.path.lstrip("/"), *pieces',
        "equivalent: a remote location's path (bucket/key) never starts with '/'",
    ),
    (
        "l2d/storage.py",
        "self.path.rstrip(None), *pieces",
        "equivalent: a remote location's path never ends in '/' or a space (parse and join build it from non-empty "
        "parts)",
    ),
    ("l2d/storage.py", "create_dir(self.path, )", "equivalent: pyarrow's create_dir is recursive by default"),
    (
        "l2d/storage.py",
        "if (info.type != pafs.FileType.NotFound) or True",
        "equivalent: a missing file's info has no modification time (None)",
    ),
    (
        "l2d/storage.py",
        ("recursive=True, allow_not_found=None)", "recursive=True, allow_not_found=False)", "recursive=True, ))"),
        "equivalent but for a race: the folder was just seen to exist (only one deleted between the two calls differs)",
    ),
    (
        "l2d/storage.py",
        ('tmp = Location(None, f"{self.path}', '.tmp", None)', '.tmp", )', "uuid.uuid4().hex[:13]"),
        "equivalent: the temporary file is local (a remote write returns before), so its scheme and options are never "
        "read, and its name's length does not matter",
    ),
    (
        "l2d/storage.py",
        ("failpoint(None)  # the fault tests", 'failpoint("XXwrite-windowXX")', 'failpoint("WRITE-WINDOW")'),
        "the failpoint's name: the fault tests (marker faults, outside mutmut's fast selection) kill there by it",
    ),
    (
        "l2d/storage.py",
        'item.rpartition("=")',
        "equivalent: no failpoint action (error, sleep:S, N) holds an '='",
    ),
    (
        "l2d/storage.py",
        ('what: str = "XX--outXX"', 'what: str = "--OUT"'),
        "the default flag named in check_output's messages: every caller names its own",
    ),
    (
        "l2d/storage.py",
        "folder, depth = above, depth - 1",
        "the walk's bound: a walk that does not count still ends at the root (a root is its own parent)",
    ),
    (
        "sweeps/folder/marker.py",
        '{"pairings", "methods"} < set(data)',
        "equivalent: a spec that got this far has a name too, so the two sets are never equal",
    ),
    (
        "sweeps/folder/lease.py",
        "flush=",
        "stderr is unbuffered here: flushing it before os._exit matters only when it is not",
    ),
    (
        "sweeps/folder/lease.py",
        ('failing_since = ""', 'self.failure: str | None = ""'),
        "equivalent: '' and None are both false where they are tested",
    ),
    (
        "sweeps/folder/lease.py",
        ("join(timeout=", "if self._thread is None:"),
        "the wait for the renewal thread, which the stop event ends at once: timing only",
    ),
    (
        "sweeps/folder/lease.py",
        "if store is not None or self._token is not None",
        "unreachable: acquire sets the store and the token together",
    ),
    (
        "sweeps/folder/lease.py",
        "for _ in range(6):",
        "the number of attempts at a lease that changes under each one: 5 and 6 differ only to a store that changes "
        "it 5 times running",
    ),
]


def _matches(texts: str | tuple[str, ...], changed: str) -> bool:
    """Whether a mutant's change holds the text (any of the texts) of a reason."""
    return any(text in changed for text in ((texts,) if isinstance(texts, str) else texts))


def _run(modules: list[str]) -> float | None:
    """mutmut over ``modules`` (its generation and coverage run include every configured module); seconds taken, or
    None when mutmut failed (its tests did not pass unmutated, say: then nothing it holds is a result)."""
    names = [m.removesuffix(".py").replace("/", ".") + ".*" for m in modules]
    started = time.time()
    done = subprocess.run([*MUTMUT, "run", "--max-children", "2", *names], cwd=ROOT, check=False)
    return time.time() - started if done.returncode == 0 else None


def _statuses() -> dict[str, str]:
    done = subprocess.run([*MUTMUT, "results", "--all", "true"], cwd=ROOT, capture_output=True, text=True, check=False)
    found = {}
    for line in done.stdout.splitlines():
        match = re.match(r"\s*(\S+): (\w[\w ]*)$", line)
        if match:
            found[match.group(1)] = match.group(2)
    return found


def _diff(name: str) -> list[str]:
    done = subprocess.run([*MUTMUT, "show", name], cwd=ROOT, capture_output=True, text=True, check=False)
    return [line for line in done.stdout.splitlines() if line[:1] in "+-" and line[:3] not in ("+++", "---")]


def _module_of(name: str) -> str:
    dotted = name.split(".x")[0] if ".x" in name else name.rsplit(".", 1)[0]
    return dotted.replace(".", "/") + ".py"


def report(modules: list[str], seconds: float | None) -> dict:
    statuses = _statuses()
    table: dict[str, dict] = {}
    for name, status in sorted(statuses.items()):
        module = _module_of(name)
        if module not in modules:
            continue
        entry = table.setdefault(
            module,
            {
                "killed": 0,
                "survived": 0,
                "timeout": 0,
                "not checked": 0,
                "other": 0,
                "explained": [],
                "unexplained": [],
            },
        )
        kind = status if status in ("killed", "survived", "timeout", "not checked") else "other"
        entry[kind] += 1
        if status == "survived":
            diff = _diff(name)
            changed = " / ".join(line.strip() for line in diff)
            reason = next((why for where, texts, why in REASONS if where == module and _matches(texts, changed)), None)
            record = {"mutant": name, "change": changed[:300]}
            if reason:
                entry["explained"].append({**record, "reason": reason})
            else:
                entry["unexplained"].append(record)
    for entry in table.values():
        entry["run"] = {"seconds": seconds, "modules": len(modules), "date": time.strftime("%Y-%m-%d")}
    return {"modules": table, "mutmut": _version()}


def _version() -> str:
    from importlib import metadata

    return metadata.version("mutmut")


def render(data: dict) -> str:
    lines = [
        "| module | mutants | killed | survived, explained | survived, no reason yet | not run |",
        "|---|---|---|---|---|---|",
    ]
    for module in MODULES:
        entry = data["modules"].get(module)
        if entry is None:
            lines.append(f"| `{module}` | - | - | - | - | not run yet |")
            continue
        total = sum(entry[k] for k in ("killed", "survived", "timeout", "not checked", "other"))
        lines.append(
            f"| `{module}` | {total} | {entry['killed'] + entry['timeout']} | {len(entry['explained'])} | "
            f"{len(entry['unexplained'])} | {entry['not checked']} |"
        )
    unexplained = [m for e in data["modules"].values() for m in e["unexplained"]]
    reasons = sorted({(m, r["reason"]) for m, e in data["modules"].items() for r in e["explained"]})
    runs = sorted(
        {(e["run"]["date"], e["run"]["seconds"], e["run"]["modules"]) for e in data["modules"].values() if "run" in e},
        key=lambda run: (run[0], run[1] or 0),
    )
    said = [f"{n} module(s) on {date}" + (f" in {sec / 60:.0f} min" if sec else "") for date, sec, n in runs]
    lines += ["", f"mutmut {data['mutmut']} on this machine (2 cores): " + "; ".join(said) + "."]
    if reasons:
        lines += ["", "Survivors with a reason:", ""] + [f"- `{m}`: {why}" for m, why in reasons]
    if unexplained:
        lines += ["", "Survivors without a reason (each is a test to write):", ""]
        lines += [f"- `{m['mutant']}`: `{m['change'][:160]}`" for m in unexplained]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--modules",
        nargs="+",
        default=MODULES,
        choices=MODULES,
        metavar="MODULE",
        help=f"the modules to mutate (default: all of {', '.join(MODULES)})",
    )
    parser.add_argument("--report-only", action="store_true", help="no run: the report of mutmut's last results")
    args = parser.parse_args(argv)
    seconds = None if args.report_only else _run(args.modules)
    if seconds is None and not args.report_only:
        print(
            "mutmut failed (see its output above: with debug = true in [tool.mutmut] it shows the failing test); "
            "no report written",
            file=sys.stderr,
        )
        return 1
    previous = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {"modules": {}}
    data = report(args.modules, seconds)
    data["modules"] = {
        **previous.get("modules", {}),
        # a module mutmut holds no results for (its mutants/ folder is gone, or its run stopped before testing any
        # mutant) keeps its last report
        **{m: e for m, e in data["modules"].items() if e["killed"] + e["survived"] + e["timeout"]},
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(data, indent=1))
    table = render(data)
    print(table)
    text = DOCS.read_text()
    if START in text and END in text:
        head, rest = text.split(START, 1)
        DOCS.write_text(f"{head}{START}\n{table}\n{END}{rest.split(END, 1)[1]}")
    unexplained = sum(len(e["unexplained"]) for e in data["modules"].values())
    print(f"\n{unexplained} surviving mutant(s) without a reason; report in {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
