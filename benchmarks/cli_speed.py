"""How fast the command line answers: the wall time of ``l2d-sweep --help``, ``status`` and ``results`` on the
quickstart sweep, beside ``python -c pass`` (the interpreter alone) and ``python -c "import torch"``, measured side by
side in one run, each command alternated with the others ``--repeats`` times (medians reported).

The sweep is ``runs/quickstart`` (``make sweep``); ``--sweep`` names another; when it does not exist the quickstart
sweep is run first (a few minutes on 2 cores).

Usage:
    python benchmarks/cli_speed.py [--repeats 7] [--sweep runs/quickstart] [--out benchmarks/results/cli_speed.json]
    python benchmarks/cli_speed.py --summarize benchmarks/results/cli_speed.json --readme
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._report import add_report_arguments, command_line, parse_report_args, readme_block, write_report  # noqa: E402 - run as a script: the repository on sys.path first


def commands(sweep: str) -> list[tuple[str, list[str]]]:
    python = sys.executable
    cli = [python, "-m", "sweeps.cli"]
    return [
        ("python -c pass", [python, "-c", "pass"]),
        ('python -c "import torch"', [python, "-c", "import torch"]),
        ("l2d-sweep --help", [*cli, "--help"]),
        ("l2d-sweep status SWEEP", [*cli, "status", sweep]),
        ("l2d-sweep results SWEEP", [*cli, "results", sweep]),
        ("l2d-sweep validate SPEC", [*cli, "validate", str(ROOT / "search_spaces" / "quickstart.yaml")]),
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--sweep", default=str(ROOT / "runs" / "quickstart"))
    add_report_arguments(parser, "cli_speed")
    args = parse_report_args(parser, argv, summarize)
    if args is None:
        return
    if not (Path(args.sweep) / "spec.yaml").is_file():
        print(f"{args.sweep}: no sweep there; running the quickstart first", flush=True)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "sweeps.cli",
                "-q",
                "run",
                str(ROOT / "search_spaces" / "quickstart.yaml"),
                "--storage",
                str(Path(args.sweep).parent),
                "--name",
                Path(args.sweep).name,
            ],
            check=True,
            cwd=ROOT,
        )
    timings: dict[str, list[float]] = {name: [] for name, _ in commands(args.sweep)}
    for _ in range(args.repeats):
        for name, command in commands(args.sweep):
            start = time.perf_counter()
            done = subprocess.run(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            timings[name].append(time.perf_counter() - start)
            if done.returncode != 0:
                sys.exit(f"error: `{name}` failed: {done.stderr.strip()[-300:]}")
    torch_time = statistics.median(timings['python -c "import torch"'])
    rows = [
        {
            "command": name,
            "median_s": statistics.median(values),
            "min_s": min(values),
            "runs": len(values),
            "vs_import_torch": statistics.median(values) / torch_time,
        }
        for name, values in timings.items()
    ]
    report = {"rows": rows, "repeats": args.repeats, "command": command_line("cli_speed.py", args.argv)}
    print(summarize(report, False))
    write_report(args.out, "cli_speed", rows, **{k: v for k, v in report.items() if k != "rows"})


def summarize(report: dict, write: bool) -> str:
    lines = [f"$ {report['command']}", f"{'command':<28}{'median s':>10}{'min s':>8}{'x import torch':>16}", "-" * 62]
    for row in report["rows"]:
        lines.append(f"{row['command']:<28}{row['median_s']:>10.2f}{row['min_s']:>8.2f}{row['vs_import_torch']:>16.2f}")
    reads = [r for r in report["rows"] if r["command"].startswith("l2d-sweep")]
    verdict = "faster" if all(r["vs_import_torch"] < 1 for r in reads) else "NOT all faster"
    lines.append(
        f"every l2d-sweep read command above is {verdict} than importing torch "
        f"({report['repeats']} runs each, alternated)"
    )
    return readme_block("cli_speed", lines, write)


if __name__ == "__main__":
    main()
