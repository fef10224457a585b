"""The commands about sweeps: ``run``, ``resume``, ``results`` and ``status``."""

from __future__ import annotations

import argparse
import io
import sys

from sweeps.cli._common import bounded, positive_int


def _apply_overrides(args: argparse.Namespace):
    from sweeps.spec import load_spec, parse_spec

    spec = load_spec(args.spec)
    overrides = {}
    if args.num_samples is not None:
        overrides["budget"] = {**spec.to_dict()["budget"], "num_samples": args.num_samples}
    if args.max_epochs is not None:
        budget = overrides.get("budget", spec.to_dict()["budget"])
        overrides["budget"] = {**budget, "max_epochs": args.max_epochs,
                               "grace_period": min(budget["grace_period"], args.max_epochs)}
    if args.storage is not None:
        overrides["storage"] = args.storage
    if getattr(args, "warm_start", None) is not None:
        overrides["warm_start"] = args.warm_start
    if args.name is not None:
        overrides["name"] = args.name
    if not overrides:
        return spec
    data = spec.to_dict()
    data.update(overrides)
    return parse_spec(data, f"{args.spec} (with command-line overrides)")


def _differences(stored: dict, given: dict, prefix: str = "") -> list[str]:
    """``field: stored X, given Y`` for every leaf that differs between two spec dicts."""
    lines = []
    for key in sorted(set(stored) | set(given), key=str):
        a, b = stored.get(key), given.get(key)
        where = f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            lines += _differences(a, b, f"{where}.")
        elif a != b:
            lines.append(f"{where}: stored {a!r}, given {b!r}")
    return lines


def _finish(outcome, sweep_dir) -> int:
    """Print the leaderboard and the outcome; the exit status (0: at least one trial that did not fail)."""
    from sweeps.runner import print_leaderboard

    if outcome.results is not None:
        print(f"\nleaderboard of {sweep_dir} (best val mAP per trial; test mAP at that epoch):")
        print_leaderboard(outcome.results)
    if not outcome.succeeded:
        print(f"l2d-sweep: the sweep did not succeed: {outcome.describe()}; see `l2d-sweep status {sweep_dir}`",
              file=sys.stderr)
        return 1
    print(f"sweep finished: {outcome.describe()}")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from sweeps.runner import load_sweep_spec, resume_sweep, run_sweep, sweep_exists

    if args.or_resume and args.new:
        raise ValueError("--or-resume and --new contradict each other; pass one")
    spec = _apply_overrides(args)
    if args.or_resume and sweep_exists(spec.sweep_dir):
        changed = _differences(load_sweep_spec(spec.sweep_dir).to_dict(), spec.to_dict())
        if changed:
            raise ValueError(f"--or-resume: {spec.sweep_dir} was started with another spec ({'; '.join(changed)}); "
                             f"resume it as it is (without the changes), start another sweep (--name), or grow it "
                             f"with `l2d-sweep extend`")
        print(f"{spec.sweep_dir} exists: resuming it (--or-resume)")
        return _finish(resume_sweep(spec.sweep_dir, quiet=args.quiet, force=args.force, verbose=args.verbose),
                       spec.sweep_dir)
    return _finish(run_sweep(spec, new=args.new, quiet=args.quiet, force=args.force, verbose=args.verbose),
                   spec.sweep_dir)


def _cmd_extend(args: argparse.Namespace) -> int:
    from sweeps.runner import extend_sweep

    outcome = extend_sweep(args.path, args.num_samples, args.max_epochs, quiet=args.quiet, force=args.force,
                           verbose=args.verbose)
    return _finish(outcome, outcome.results.sweep_dir if outcome.results is not None else args.path)


def _cmd_export(args: argparse.Namespace) -> int:
    from sweeps.export import export_trial

    formats = tuple(dict.fromkeys(["safetensors", *[f.strip() for f in args.format.split(",") if f.strip()]]))
    card = export_trial(args.path, args.trial, args.out, formats, progress=(lambda text: None) if args.quiet else print)
    print(f"exported trial {card['trial_id']} ({card['backbone']}, {card['parameters']:,} parameters) to {args.out}; "
          f"load it with l2d.export.load_student({str(args.out)!r})")
    return 0


def _cmd_dashboard(args: argparse.Namespace) -> int:
    import wsgiref.simple_server

    from sweeps.study import load_sweep_study

    try:
        import optuna_dashboard
    except ImportError:
        raise RuntimeError("optuna-dashboard is not installed: pip install 'l2d-sweep[dashboard]'") from None
    spec, study, store = load_sweep_study(args.path)

    class QuietHandler(wsgiref.simple_server.WSGIRequestHandler):
        def log_message(self, *arguments):  # one line per request would drown the URL
            pass

    app = optuna_dashboard.wsgi(store.storage())
    server = wsgiref.simple_server.make_server("127.0.0.1", args.port, app, handler_class=QuietHandler)
    port = server.server_address[1]
    print(f"optuna-dashboard on the study {study.study_name!r} of {spec.sweep_dir} ({len(study.trials)} trials, "
          f"{store.describe()}): http://127.0.0.1:{port}/dashboard/  (Ctrl-C stops it)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("dashboard stopped")
    finally:
        server.server_close()
    return 0


def _cmd_resume(args: argparse.Namespace) -> int:
    from sweeps.runner import resume_sweep

    outcome = resume_sweep(args.path, quiet=args.quiet, force=args.force, verbose=args.verbose)
    return _finish(outcome, outcome.results.sweep_dir if outcome.results is not None else args.path)


def _cmd_results(args: argparse.Namespace) -> int:
    from sweeps.results import SweepResults, format_table

    results = SweepResults(args.path)
    if args.sql:
        print(format_table(results.sql(args.sql), args.format))
        return 0
    if args.pareto:
        table = results.pareto()
        if len(results.objectives) > 1:
            from sweeps.study import load_sweep_study, search_front

            names = " vs ".join(f"{m} ({mode})" for m, mode in results.objectives)
            study = load_sweep_study(args.path)[1]
            front, warm = search_front(study), search_front(study, warm_start=True)
            same = front == sorted(table.column("trial_id").to_pylist())
            print(f"Pareto front of {names}: {len(front)} trial(s) found by the search"
                  + (f", beside {len(warm)} warm-start trial(s) of the sweep it started from "
                     f"({', '.join(warm)}) that dominate the others" if warm else "")
                  + ("" if same else "; the non-dominated rows of this sweep's own trials:"))
            if front and not same:
                print("search front: " + ", ".join(front))
        print(format_table(table, args.format))
        plot = _pareto_plot(results)
        if plot:
            print(f"plot: {plot}")
        return 0
    columns = [c.strip() for c in args.columns.split(",") if c.strip()] if args.columns else None
    print(format_table(results.leaderboard(args.limit, columns), args.format))
    return 0


def _pareto_plot(results) -> str | None:
    """Write pareto.png beside the results (the first objective against the last, or val mAP against student
    parameters; the front highlighted)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib)", file=sys.stderr)
        return None
    from sweeps.results import OBJECTIVE_COLUMNS

    objectives = results.objectives if len(results.objectives) > 1 else [("val_mAP", "max"), ("student_params", "min")]
    y, x = OBJECTIVE_COLUMNS[objectives[0][0]], OBJECTIVE_COLUMNS[objectives[-1][0]]
    everything = results.sql(f"SELECT {x}, {y} FROM trials WHERE {x} IS NOT NULL AND {y} IS NOT NULL")
    front = results.pareto()
    figure, axes = plt.subplots(figsize=(6, 4))
    axes.scatter(everything[x].to_pylist(), everything[y].to_pylist(), c="0.6", label="trials")
    axes.plot(front[x].to_pylist(), front[y].to_pylist(), "o-", c="C1", label="Pareto front")
    if x == "student_params":
        axes.set_xscale("log")
    axes.set_xlabel(objectives[-1][0].replace("_", " "))
    axes.set_ylabel(objectives[0][0].replace("_", " ") + " (best epoch)")
    axes.legend()
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    plt.close(figure)
    target = results.sweep_dir / "results" / "pareto.png"
    target.write_bytes(buffer.getvalue())
    return str(target)


def _cmd_status(args: argparse.Namespace) -> int:
    from l2d.storage import Location
    from sweeps.folder import read_lease
    from sweeps.results import SweepResults, format_table
    from sweeps.runner import _outcome

    results = SweepResults(args.path)
    counts = results.sql("SELECT status, count(*) AS trials FROM trials GROUP BY status ORDER BY status")
    print("trials by state: " + ", ".join(f"{r['status']} {r['trials']}" for r in counts.to_pylist()))
    lease = read_lease(Location.parse(args.path))
    if lease is not None and lease.stale() is None:
        print(f"driver: running, {lease.describe()}")
    else:
        outcome = _outcome(Location.parse(args.path))
        verdict = "succeeded" if outcome.succeeded else "did not succeed (exit status 1)"
        stale = f" (a stale lease: {lease.describe()})" if lease is not None else ""
        print(f"driver: not running{stale}; the sweep {verdict}: {outcome.describe()}")
    from sweeps.results import OBJECTIVE_COLUMNS

    metric, _ = results.objectives[0]
    column = OBJECTIVE_COLUMNS[metric]
    best = results.leaderboard(1, ["teacher", "student", "method", column, "test_mAP_at_best", "best_epoch"]).to_pylist()
    if best:
        b = best[0]
        test = f", test mAP {b['test_mAP']:.2f}" if b.get("test_mAP") is not None else ""
        print(f"best so far (by {metric}): {b['trial_id']} {b['teacher']} -> {b['student']} {b['method']}: "
              f"{metric} {b[column] if column in b else b.get(metric)}{test} (epoch {b['best_epoch']})")
    running = results.sql("SELECT t.trial_id, t.student, t.method, t.epochs_run AS epoch, "
                          "round(t.last_val_mAP, 2) AS last_val_mAP FROM trials t WHERE status = 'running' "
                          "ORDER BY trial_id")
    if running.num_rows:
        print("running:")
        print(format_table(running))
    folder = Location.parse(args.path)
    size, checkpoints = folder.size(), (folder / "train").size()
    print(f"folder: {_megabytes(size)} ({_megabytes(checkpoints)} of checkpoints)")
    return 0


def _megabytes(size: int) -> str:
    return f"{size / 2**20:.1f} MiB" if size < 2**30 else f"{size / 2**30:.2f} GiB"


def add_commands(commands) -> None:
    """Add ``run``, ``resume``, ``results`` and ``status`` to the subparsers ``commands``."""
    run = commands.add_parser(
        "run", help="run a sweep from a YAML spec",
        description="Run a sweep: the teacher phase, then student trials (Tune + Optuna TPE + ASHA), with live "
                    "progress and the leaderboard at the end. Refuses a sweep that already exists (resume it, "
                    "or pass --new).")
    run.add_argument("spec", help="the sweep's YAML file (see search_spaces/)")
    run.add_argument("--new", action="store_true", help="delete an existing sweep of the same name and start over")
    run.add_argument("--or-resume", action="store_true",
                     help="resume the sweep when it already exists (an idempotent entry point for job submission)")
    run.add_argument("--num-samples", type=positive_int, help="override budget.num_samples")
    run.add_argument("--max-epochs", type=positive_int, help="override budget.max_epochs")
    run.add_argument("--storage", help="override storage (a folder or s3:// / gs:// URI)")
    run.add_argument("--name", help="override the sweep's name")
    run.add_argument("--warm-start", metavar="SWEEP",
                     help="seed the study with the finished trials of another sweep (a folder or URI) that fit this space")
    run.add_argument("--force", action="store_true",
                     help="take the sweep's lease even if another driver seems to hold it (when that driver is gone)")
    run.set_defaults(func=_cmd_run)

    resume = commands.add_parser(
        "resume", help="continue a sweep that was stopped or killed",
        description="Continue a sweep: finished trials are not re-run, interrupted ones continue from their last "
                    "epoch checkpoint, the Optuna study and ASHA's rungs carry on.")
    resume.add_argument("path", help="the sweep folder (<storage>/<name>)")
    resume.add_argument("--force", action="store_true",
                        help="take the sweep's lease even if another driver seems to hold it (when that driver is "
                             "gone)")
    resume.set_defaults(func=_cmd_resume)

    extend = commands.add_parser(
        "extend", help="grow a finished sweep by more trials",
        description="Run N more trials in a finished sweep's folder: the same study (the sampler sees every earlier "
                    "trial), ASHA's rungs and results tables carried on, a new Tune experiment (tune-<k>). "
                    "Resumable like a run.")
    extend.add_argument("path", help="the sweep folder")
    extend.add_argument("--num-samples", type=positive_int, required=True, help="how many more trials")
    extend.add_argument("--max-epochs", type=positive_int, help="epochs of the new trials (default: as before)")
    extend.add_argument("--force", action="store_true", help="take the lease of a driver that is gone")
    extend.set_defaults(func=_cmd_extend)

    export = commands.add_parser(
        "export", help="take a trial's best student out of a sweep",
        description="Write a trial's best epoch (by the spec's metric) as an export folder: student.safetensors, "
                    "card.json and README.md (a model card: backbone, labels, teacher, method and weights, metrics "
                    "at that epoch, latency, size, sweep and trial ids, versions, commit); optionally TorchScript "
                    "and ONNX. Load it with l2d.export.load_student(DIR).")
    export.add_argument("path", help="the sweep folder")
    which = export.add_mutually_exclusive_group()
    which.add_argument("--trial", help="the trial id (default: the best trial by the spec's primary objective)")
    which.add_argument("--best", action="store_true", help="the best trial (the default)")
    export.add_argument("--out", required=True, help="the export folder (a local folder or s3:// / gs:// URI)")
    export.add_argument("--format", default="safetensors",
                        help="comma-separated: safetensors (always), torchscript, onnx (needs the onnx package)")
    export.set_defaults(func=_cmd_export)

    dashboard = commands.add_parser(
        "dashboard", help="browse the sweep's Optuna study in optuna-dashboard",
        description="Serve optuna-dashboard on 127.0.0.1 on the sweep's study (history, parameter importance, "
                    "parallel coordinates, Pareto front); Ctrl-C stops it. Needs the [dashboard] extra.")
    dashboard.add_argument("path", help="the sweep folder")
    dashboard.add_argument("--port", type=bounded(int, 0, maximum=65535), default=8080,
                           help="port on 127.0.0.1 (default: 8080; 0: any free one)")
    dashboard.set_defaults(func=_cmd_dashboard)

    results = commands.add_parser(
        "results", help="the leaderboard, SQL over the results, the Pareto front",
        description="Query a sweep's results: by default the leaderboard (top trials by val mAP, test mAP "
                    "beside it); --sql runs DuckDB SQL over the views `trials` and `epochs`.")
    results.add_argument("path", help="the sweep folder")
    results.add_argument("--sql", help='DuckDB SQL over the views trials and epochs, e.g. "SELECT method, '
                                       'max(best_val_mAP) FROM trials GROUP BY method"')
    results.add_argument("--format", choices=["table", "csv", "json"], default="table", help="output format")
    results.add_argument("--limit", type=positive_int, default=10, help="leaderboard rows (default: 10)")
    results.add_argument("--columns", help="the leaderboard's columns, comma-separated (any of the trials table's; "
                                           "default: the objectives, test mAP, and every hyperparameter the trials "
                                           "have)")
    results.add_argument("--pareto", action="store_true",
                         help="the val mAP vs student size Pareto front; also writes results/pareto.png")
    results.set_defaults(func=_cmd_results)

    status = commands.add_parser("status", help="trials by state, the best so far, running trials",
                                 description="A sweep's trials by state, the best trial so far and the running "
                                             "trials with their epochs (from the results tables, refreshed "
                                             "while the sweep runs).")
    status.add_argument("path", help="the sweep folder")
    status.set_defaults(func=_cmd_status)
