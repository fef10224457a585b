"""The commands about sweeps: ``run``, ``resume``, ``results`` and ``status``."""

from __future__ import annotations

import argparse
import json
import sys
import time
import wsgiref.simple_server

import pyarrow as pa

from sweeps.api import Sweep
from sweeps.cli._common import add_format_argument, bounded, positive_int, render
from sweeps.folder.lease import LeaseKeeper
from sweeps.results import CorruptResultsError, ResultsWriter
from sweeps.results.reader import describe_ledger
from sweeps.results.teachers import ALONE, teacher_warnings
from sweeps.search.study import load_sweep_study, search_front
from sweeps.specs import load_spec, with_overrides
from sweeps.specs.stored import load_sweep_spec

# Loaded late, inside the functions that use them: optuna_dashboard (imported where its absence is handled);
# sweeps.tune.runner (not needed when the command line starts).


def _spec_from_args(args: argparse.Namespace):
    """The spec file with the command line's overrides (the one override path: :func:`sweeps.specs.with_overrides`)."""
    spec = load_spec(args.spec)
    changes = {
        "budget.num_samples": args.num_samples,
        "budget.max_epochs": args.max_epochs,
        "storage": args.storage,
        "warm_start": getattr(args, "warm_start", None),
        "name": args.name,
    }
    if not any(v is not None for v in changes.values()):
        return spec
    return with_overrides(spec, f"{args.spec} (with command-line overrides)", **changes)


def _options(args: argparse.Namespace) -> dict:
    return {
        "quiet": args.quiet,
        "force": getattr(args, "force", False),
        "verbose": args.verbose,
        "trust": getattr(args, "trust", False),
    }


def _finish(outcome, sweep_dir, quiet: bool = False) -> int:
    """Print the leaderboard and the outcome (and, on stderr, what to do next); the exit status (0: at least one
    trial that did not fail)."""
    if outcome.results is not None:
        spec = outcome.results.stored_spec
        seeds = spec.budget.selection_seeds if spec is not None else 1
        each = ""
        if seeds > 1:  # budget.selection_seeds: a trial's values are means
            each = f", each the mean of its {seeds} students' (seeds {spec.seed} to {spec.seed + seeds - 1})"
        print(f"\nleaderboard of {sweep_dir} (best val mAP per trial{each}; test mAP at that epoch):")
        print(render(outcome.results.leaderboard(10)))
        _print_teachers(outcome.results)
        _print_confirmation(outcome.results)
    if not outcome.succeeded:
        print(
            f"l2d-sweep: the sweep did not succeed: {outcome.describe()}; see `l2d-sweep status {sweep_dir}`",
            file=sys.stderr,
        )
        return 1
    print(f"sweep finished: {outcome.describe()}")
    if not quiet:
        print(
            f"next: `l2d-sweep export {sweep_dir} --best --out DIR` (the best student), `l2d-sweep plot {sweep_dir} "
            f"--kind history --out history.png`, `l2d-sweep extend {sweep_dir} --num-samples N` (more trials)",
            file=sys.stderr,
        )
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    if args.or_resume and args.new:
        raise ValueError("--or-resume and --new contradict each other; pass one")
    spec = _spec_from_args(args)  # a bad spec is refused before Ray and torch are loaded
    args.sweep_dir = spec.sweep_dir  # for the resume hint of an interrupted run (sweeps.cli.main)
    from sweeps.tune.runner import run_or_resume, run_sweep

    if args.or_resume:
        return _finish(run_or_resume(spec, **_options(args)), spec.sweep_dir, args.quiet)
    return _finish(run_sweep(spec, new=args.new, **_options(args)), spec.sweep_dir, args.quiet)


def _print_confirmation(results, fmt: str = "table", only: bool = False) -> None:
    """The confirmation stage's table and verdict (nothing when the sweep has none; ``only``: say so)."""
    confirmation = results.confirmation()
    if confirmation is None:
        if only:
            print(f"{results.sweep_dir}: no confirmation stage (`l2d-sweep confirm {results.sweep_dir}` adds one)")
        return
    table = pa.Table.from_pylist(confirmation.table())
    if fmt != "table":
        print(render(table, fmt))
        return
    shown = [c for c in table.column_names if c in ("configuration", "student", "seeds", "sd", "test_mAP", "winner")]
    shown[3:3] = [f"mean_{confirmation.metric}"]
    shown[6:6] = ["vs_baseline", "vs_winner"]  # the intervals and verdicts are in the lines below
    print(f"\nconfirmation of {results.sweep_dir} (vs_*: paired mean differences over the seeds):")
    print(render(table.select(shown)))
    for line in confirmation.describe():
        print(line)


def _print_teachers(results, fmt: str = "table", only: bool = False) -> None:
    """Each pairing's teacher beside its student trained alone, and a warning for a teacher that is no better
    (nothing when the sweep had no teacher phase; ``only``: say so). A damaged ``teachers.json`` is a note on
    stderr: the leaderboard above it stands."""
    try:
        table = results.teachers()
    except CorruptResultsError as error:
        print(f"l2d-sweep: {error}", file=sys.stderr)
        return
    if table.num_rows == 0:
        if only:
            print(
                f"{results.sweep_dir}: no teacher recorded (no method of the sweep needs one, or its teacher phase "
                f"has not run)"
            )
        return
    if fmt != "table":
        print(render(table, fmt))
        return
    shown = {  # the columns a person compares, under short names (--teachers --format csv: all, as named)
        "teacher": "teacher",
        "how": "how",
        "teacher_val_mAP": "val_mAP",
        "teacher_test_mAP": "test_mAP",
        "student": "student",
        "alone_val_mAP": "alone_val",
        "margin": "margin",
        "best_distilled_val_mAP": "distilled_val",
    }
    print(
        f"\nteachers of {results.sweep_dir} (mAP on the sweep's own val/test splits; alone_val: the student trained "
        f"alone, {ALONE}; margin: teacher minus alone, val; distilled_val: the pairing's best distilled trial):"
    )
    print(render(table.select(list(shown)).rename_columns(list(shown.values()))))
    for line in teacher_warnings(table.to_pylist()):
        print(line)


def _cmd_confirm(args: argparse.Namespace) -> int:
    from sweeps.tune.runner import confirm_sweep

    args.sweep_dir = args.path
    baseline = None if args.baseline.lower() == "none" else args.baseline
    outcome = confirm_sweep(args.path, args.top, args.seeds, baseline, args.per_method, **_options(args))
    return _finish(outcome, outcome.results.sweep_dir if outcome.results is not None else args.path, args.quiet)


def _cmd_extend(args: argparse.Namespace) -> int:
    from sweeps.tune.runner import extend_sweep

    args.sweep_dir = args.path
    outcome = extend_sweep(args.path, args.num_samples, args.max_epochs, **_options(args))
    return _finish(outcome, outcome.results.sweep_dir if outcome.results is not None else args.path, args.quiet)


def _cmd_export(args: argparse.Namespace) -> int:
    formats = tuple(dict.fromkeys(["safetensors", *[f.strip() for f in args.format.split(",") if f.strip()]]))
    card = Sweep.open(args.path).export(args.out, args.trial, formats, quiet=args.quiet)
    print(
        f"exported trial {card['trial_id']} ({card['backbone']}, {card['parameters']:,} parameters) to {args.out}; "
        f"load it with l2d.export.load_student({str(args.out)!r})"
    )
    return 0


def _cmd_dashboard(args: argparse.Namespace) -> int:
    try:
        import optuna_dashboard
    except ImportError:
        raise RuntimeError("optuna-dashboard is not installed: pip install 'l2d-sweep[dashboard]'") from None
    spec, study, store = load_sweep_study(args.path, read_only=not args.writable)
    if args.writable:
        print(
            f"l2d-sweep dashboard: --writable: the dashboard can change and delete the study of {spec.sweep_dir} "
            f"(its delete button removes the sweep's search history; the results tables keep the trials)",
            file=sys.stderr,
        )

    class QuietHandler(wsgiref.simple_server.WSGIRequestHandler):
        def log_message(self, *arguments):  # one line per request would drown the URL
            pass

    app = optuna_dashboard.wsgi(store.storage())
    server = wsgiref.simple_server.make_server("127.0.0.1", args.port, app, handler_class=QuietHandler)
    port = server.server_address[1]
    mode = "writable" if args.writable else "read-only"
    print(
        f"optuna-dashboard on the study {study.study_name!r} of {spec.sweep_dir} ({len(study.trials)} trials, "
        f"{store.describe()}, {mode}): http://127.0.0.1:{port}/dashboard/  (Ctrl-C stops it)",
        flush=True,
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("dashboard stopped")
    finally:
        server.server_close()
    return 0


def _cmd_resume(args: argparse.Namespace) -> int:
    from sweeps.tune.runner import resume_sweep

    args.sweep_dir = args.path
    outcome = resume_sweep(args.path, **_options(args))
    return _finish(outcome, outcome.results.sweep_dir if outcome.results is not None else args.path, args.quiet)


def _cmd_results(args: argparse.Namespace) -> int:
    if args.compact:
        return _compact(args.path)
    sweep = Sweep.open(args.path)
    results = sweep.results()
    if args.sql:
        print(render(results.sql(args.sql, memory_limit=args.sql_memory, timeout_s=args.sql_timeout), args.format))
        return 0
    if args.pareto:
        table = results.pareto()
        if len(results.objectives) > 1:
            names = " vs ".join(f"{m} ({mode})" for m, mode in results.objectives)
            study = sweep.study()
            front, warm = search_front(study), search_front(study, warm_start=True)
            same = front == sorted(table.column("trial_id").to_pylist())
            print(
                f"Pareto front of {names}: {len(front)} trial(s) found by the search"
                + (
                    f", beside {len(warm)} warm-start trial(s) of the sweep it started from "
                    f"({', '.join(warm)}) that dominate the others"
                    if warm
                    else ""
                )
                + ("" if same else "; the non-dominated rows of this sweep's own trials:")
            )
            if front and not same:
                print("search front: " + ", ".join(front))
        print(render(table, args.format))
        return 0
    if args.confirmation:
        _print_confirmation(results, args.format, only=True)
        return 0
    if args.teachers:
        _print_teachers(results, args.format, only=True)
        return 0
    columns = [c.strip() for c in args.columns.split(",") if c.strip()] if args.columns else None
    if args.format == "table":  # for a person: the top rows, the columns that matter, rounded when shown
        print(render(results.leaderboard(args.limit or 10, columns), args.format))

        ledger = describe_ledger(results.ledger())
        if ledger:
            print(ledger)
        _print_teachers(results)
        _print_confirmation(results)
    else:  # data: every row and every column at full precision, unless --limit / --columns choose
        print(render(results.leaderboard(args.limit, columns, every_column=True), args.format))
    return 0


def _compact(path: str) -> int:
    """Rewrite the compacted trials.parquet / epochs.parquet from the newest generation, under the sweep's lease."""
    spec = load_sweep_spec(path)
    keeper = LeaseKeeper(spec.sweep_dir, say=lambda text: print(text, file=sys.stderr)).acquire()
    try:
        writer = ResultsWriter(spec.sweep_dir, spec.budget.max_epochs, spec.metric, spec.mode)
        writer.publish()
    finally:
        keeper.release()
    trials, epochs = writer.tables()
    print(
        f"{writer.store.folder}: trials.parquet ({trials.num_rows} rows) and epochs.parquet ({epochs.num_rows} "
        f"rows) rewritten from generation {writer.manifest.generation}"
    )
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    if not args.watch:
        _print_status(args.path, args.format)
        return 0
    if args.format != "table":
        raise ValueError("--watch prints tables for a person; --format json reads the status once")

    interactive = sys.stdout.isatty()
    try:
        while True:
            if interactive:
                print("\033[2J\033[H", end="")  # a fresh screen each time, as `watch` does
            else:
                print(f"--- {time.strftime('%H:%M:%S')}")
            _print_status(args.path)
            sys.stdout.flush()
            if not Sweep.open(args.path).status().driver:
                print("(no driver runs this sweep: nothing more will change)")
                return 0
            time.sleep(args.watch)
    except KeyboardInterrupt:
        return 0


def _print_status(path: str, fmt: str = "table") -> None:
    status = Sweep.open(path).status()
    if fmt == "json":
        print(
            json.dumps(
                {**status.to_dict(), "path": str(status.outcome.results.sweep_dir if status.outcome.results else path)},
                indent=1,
                default=str,
            )
        )
        return
    print(
        "trials by state: "
        + ", ".join(f"{state} {n}" for state, n in status.counts.items())
        + (f" (budget {status.budget})" if status.budget else "")
    )
    stale = f" (a stale lease: {status.stale_lease})" if status.stale_lease else ""
    if status.state == "running":
        print(f"driver: running, {status.driver}")
    elif status.state in ("interrupted", "incomplete"):
        print(f"driver: not running{stale}; the sweep is {status.state}: {status.detail}")
        print(f"  continue it with `l2d-sweep resume {path}`")
    elif status.state == "failed":
        print(f"driver: not running{stale}; the sweep did not succeed (exit status 1): {status.detail}")
    else:
        print(f"driver: not running{stale}; the sweep finished: {status.detail}")
    if status.best:
        b = status.best
        test = f", test mAP {b['test_mAP']:.2f}" if b.get("test_mAP") is not None else ""
        print(f"best so far: {b['trial_id']} {b['teacher']} -> {b['student']} {b['method']}")
        print(f"  {status.metric} {b['value']:.4g}{test} (epoch {b['best_epoch']})")
    if status.confirmation:
        c = status.confirmation
        print(
            f"confirmation runs: {', '.join(f'{state} {n}' for state, n in c['counts'].items()) or 'none yet'} "
            f"({c['configurations']} configuration(s) x {c['seeds']} seed(s)"
            + (f", {c['missing']} not finished" if c["missing"] else "")
            + ")"
        )
        if c["winner"]:
            print(f"  confirmed winner: {c['winner']}, mean {status.metric} {c['winner_mean']:.4g}")
    if status.running:
        print("running:")
        print(render(pa.Table.from_pylist(status.running)))
    ledger = describe_ledger(status.ledger)
    if ledger:
        print(ledger)
    print(f"folder: {_megabytes(status.size_bytes)} ({_megabytes(status.checkpoint_bytes)} of checkpoints)")


def _megabytes(size: int) -> str:
    return f"{size / 2**20:.1f} MiB" if size < 2**30 else f"{size / 2**30:.2f} GiB"


def add_commands(commands) -> None:
    """Add ``run``, ``resume``, ``results`` and ``status`` to the subparsers ``commands``."""
    run = commands.add_parser(
        "run",
        help="run a sweep from a YAML spec",
        description="Run a sweep: the teacher phase, then student trials (Tune + Optuna TPE + ASHA), with live "
        "progress and the leaderboard at the end. Refuses a sweep that already exists (resume it, "
        "or pass --new).",
    )
    run.add_argument("spec", help="the sweep's YAML file (see search_spaces/)")
    run.add_argument("--new", action="store_true", help="delete an existing sweep of the same name and start over")
    run.add_argument(
        "--or-resume",
        action="store_true",
        help="resume the sweep when it already exists (an idempotent entry point for job submission)",
    )
    run.add_argument("--num-samples", type=positive_int, help="override budget.num_samples")
    run.add_argument("--max-epochs", type=positive_int, help="override budget.max_epochs")
    run.add_argument("--storage", help="override storage (a folder or s3:// / gs:// URI)")
    run.add_argument("--name", help="override the sweep's name")
    run.add_argument(
        "--warm-start",
        metavar="SWEEP",
        help="seed the study with the finished trials of another sweep (a folder or URI) that fit this space",
    )
    run.add_argument(
        "--force",
        action="store_true",
        help="take the sweep's lease even if another driver seems to hold it (when that driver is gone)",
    )
    run.add_argument(
        "--trust",
        action="store_true",
        help="with --or-resume: load the folder's pickles even when your key did not sign them",
    )
    run.set_defaults(func=_cmd_run)

    resume = commands.add_parser(
        "resume",
        help="continue a sweep that was stopped or killed",
        description="Continue a sweep: finished trials are not re-run, interrupted ones continue from their last "
        "epoch checkpoint, the Optuna study and ASHA's rungs carry on.",
    )
    resume.add_argument("path", help="the sweep folder (<storage>/<name>)")
    resume.add_argument(
        "--force",
        action="store_true",
        help="take the sweep's lease even if another driver seems to hold it (when that driver is gone)",
    )
    resume.add_argument(
        "--trust",
        action="store_true",
        help="load the folder's pickles (Tune's state, the searcher's) even when your key did not sign "
        "them: only for a folder you vouch for (a pickle can run any code)",
    )
    resume.set_defaults(func=_cmd_resume)

    extend = commands.add_parser(
        "extend",
        help="grow a finished sweep by more trials",
        description="Run N more trials in a finished sweep's folder: the same study (the sampler sees every earlier "
        "trial), ASHA's rungs and results tables carried on, a new Tune experiment (tune-<k>). "
        "Resumable like a run.",
    )
    extend.add_argument("path", help="the sweep folder")
    extend.add_argument("--num-samples", type=positive_int, required=True, help="how many more trials")
    extend.add_argument("--max-epochs", type=positive_int, help="epochs of the new trials (default: as before)")
    extend.add_argument("--force", action="store_true", help="take the lease of a driver that is gone")
    extend.set_defaults(func=_cmd_extend)

    confirm = commands.add_parser(
        "confirm",
        help="rerun a finished sweep's best configurations and a baseline on fresh seeds",
        description="The confirmation stage of a finished sweep (what budget.confirm runs after the search): the TOP "
        "best configurations (or the best of each method) and a baseline rerun on SEEDS fresh seeds, paired by seed; "
        "`results` then shows each one's mean and sd, its paired difference to the baseline and to the winner with "
        "an interval, and the confirmed winner (the best mean), which `export --best` takes. Resumable.",
    )
    confirm.add_argument("path", help="the sweep folder")
    confirm.add_argument("--top", type=positive_int, default=2, help="configurations to confirm (default 2)")
    confirm.add_argument("--seeds", type=positive_int, default=3, help="fresh seeds each (at least 2; default 3)")
    confirm.add_argument(
        "--baseline", default="bce", help="the method rerun beside them on the same seeds, or none (default bce)"
    )
    confirm.add_argument(
        "--per-method", action="store_true", help="the best configuration of each method instead of the best overall"
    )
    confirm.add_argument("--force", action="store_true", help="take the lease of a driver that is gone")
    confirm.set_defaults(func=_cmd_confirm)

    export = commands.add_parser(
        "export",
        help="take a trial's best student out of a sweep",
        description="Write a trial's best epoch (by the spec's metric) as an export folder: student.safetensors, "
        "card.json and README.md (a model card: backbone, labels, teacher, method and weights, metrics "
        "at that epoch, latency, size, sweep and trial ids, versions, commit); optionally TorchScript "
        "and ONNX. Load it with l2d.export.load_student(DIR).",
    )
    export.add_argument("path", help="the sweep folder")
    which = export.add_mutually_exclusive_group()
    which.add_argument("--trial", help="the trial id (default: the best trial by the spec's primary objective)")
    which.add_argument("--best", action="store_true", help="the best trial (the default)")
    export.add_argument("--out", required=True, help="the export folder (a local folder or s3:// / gs:// URI)")
    export.add_argument(
        "--format",
        default="safetensors",
        help="comma-separated: safetensors (always), torchscript, onnx (needs the onnx package)",
    )
    export.set_defaults(func=_cmd_export)

    dashboard = commands.add_parser(
        "dashboard",
        help="browse the sweep's Optuna study in optuna-dashboard",
        description="Serve optuna-dashboard on 127.0.0.1 on the sweep's study (history, parameter importance, "
        "parallel coordinates, Pareto front), read-only unless --writable; Ctrl-C stops it. Needs the "
        "[dashboard] extra.",
    )
    dashboard.add_argument("path", help="the sweep folder")
    dashboard.add_argument(
        "--port",
        type=bounded(int, 0, maximum=65535),
        default=8080,
        help="port on 127.0.0.1 (default: 8080; 0: any free one)",
    )
    dashboard.add_argument(
        "--writable",
        action="store_true",
        help="let the dashboard write the study (notes, deleting trials or the study itself); by "
        "default it reads the study read-only and its changes fail",
    )
    dashboard.set_defaults(func=_cmd_dashboard)

    results = commands.add_parser(
        "results",
        help="the leaderboard, SQL over the results, the Pareto front",
        description="Query a sweep's results: by default the leaderboard (top trials by val mAP, test mAP "
        "beside it); --sql runs DuckDB SQL over the views `trials` and `epochs`.",
    )
    results.add_argument("path", help="the sweep folder")
    results.add_argument(
        "--sql",
        help='DuckDB SQL over the views trials and epochs, e.g. "SELECT method, '
        'max(best_val_mAP) FROM trials GROUP BY method"',
    )
    add_format_argument(
        results,
        "output format: table (fits the terminal, rounded for reading), csv, json (one "
        "array), jsonl (one object a line): the data at full precision, every row and "
        "column unless --limit / --columns; data only on stdout",
    )
    results.add_argument("--sql-memory", default="1GB", help="the memory a --sql query may use (default: 1GB)")
    results.add_argument(
        "--sql-timeout",
        type=bounded(float, 0.0, exclusive=True),
        default=60.0,
        help="seconds a --sql query may run (default: 60)",
    )
    results.add_argument(
        "--limit",
        type=positive_int,
        help="leaderboard rows (default: 10 in a table; every row with --format csv/json/jsonl)",
    )
    results.add_argument(
        "--columns",
        help="the leaderboard's columns, comma-separated, by the trials table's names "
        "(best_val_mAP, test_mAP_at_best, lr...; default in a table: the objectives, "
        "test mAP and every searched hyperparameter; with --format csv/json/jsonl: "
        "every column)",
    )
    results.add_argument(
        "--pareto",
        action="store_true",
        help="the Pareto front of the objectives (val mAP vs student size for one objective)",
    )
    results.add_argument(
        "--confirmation",
        action="store_true",
        help="the confirmation stage's table only (every column: intervals, Holm p, detectable effects)",
    )
    results.add_argument(
        "--teachers",
        action="store_true",
        help="each pairing's teacher (val/test mAP, trained or adopted) beside its student trained alone (bce) and "
        "the best distilled trial; a teacher no better than its student is a warning",
    )
    results.add_argument(
        "--compact",
        action="store_true",
        help="rewrite the compacted results/trials.parquet and epochs.parquet now, from the newest "
        "generation (for tools that read the Parquet files themselves; takes the sweep's lease)",
    )
    results.set_defaults(func=_cmd_results)

    status = commands.add_parser(
        "status",
        help="trials by state, the best so far, running trials",
        description="A sweep's trials by state, the best trial so far and the running "
        "trials with their epochs (from the results tables, refreshed "
        "while the sweep runs).",
    )
    status.add_argument("path", help="the sweep folder")
    status.add_argument(
        "--watch",
        type=bounded(float, 0.0, exclusive=True),
        nargs="?",
        const=5.0,
        default=None,
        metavar="SECONDS",
        help="print it again every SECONDS (default 5) until no driver runs the "
        "sweep; Ctrl-C stops watching, never the sweep",
    )
    status.add_argument(
        "--format",
        choices=["table", "json"],
        default="table",
        help="json: the state, the trials by state, the best trial, the running trials and the last "
        "run.json entry as one JSON document",
    )
    status.set_defaults(func=_cmd_status)
