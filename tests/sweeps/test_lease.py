"""The lease between drivers: refused while held, taken over when stale (clock skew included), a compare-and-swap
that holds when two drivers race on a slow store (locally and on S3), a driver that lost it or cannot renew it
stops."""

import json
import os
import subprocess
import sys
import time

import pytest

from l2d.storage import Location
from sweeps.folder import marker as folder
from sweeps.folder.lease import Lease, LeaseHeldError, LeaseKeeper, read_lease


def test_a_second_driver_is_refused_while_the_first_holds_the_lease(tmp_path):
    sweep = Location.parse(tmp_path / "s")
    first = LeaseKeeper(sweep, say=lambda text: None).acquire()
    try:
        with pytest.raises(LeaseHeldError, match=r"is being driven by .*@.* pid \d+ .* since .* last heartbeat"):
            LeaseKeeper(sweep, say=lambda text: None).acquire()
        with pytest.raises(LeaseHeldError, match=r"refusing to delete it \(--new\) while it runs"):
            folder.write_marker(sweep)
            folder.prepare_new(sweep, delete_existing=True, say=lambda text: None)
        assert sweep.exists()
    finally:
        first.release()
    assert not (sweep / "lease.json").exists()  # released: the next driver gets it
    LeaseKeeper(sweep, say=lambda text: None).acquire().release()


def test_a_stale_lease_is_taken_over_and_a_future_heartbeat_is_not_fresh(tmp_path):
    sweep = Location.parse(tmp_path / "s")
    sweep.makedirs()
    said = []
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lease = {**json.loads(json.dumps(Lease.mine().__dict__)), "pid": int(dead.stdout)}
    cases = [
        ({}, "is gone"),
        ({"host": "elsewhere", "heartbeat": time.time() - 10_000}, "no heartbeat for"),
        ({"host": "elsewhere", "heartbeat": time.time() + 10_000}, "dated 10000 s in the future"),
    ]
    for changes, reason in cases:
        (sweep / "lease.json").write_text(json.dumps({**lease, **changes}))
        LeaseKeeper(sweep, say=said.append).acquire().release()
        assert reason in said[-1], said
    # A live one elsewhere (its clock a little ahead: still live): only --force takes it.
    (sweep / "lease.json").write_text(json.dumps({**lease, "host": "elsewhere", "heartbeat": time.time() + 20}))
    with pytest.raises(LeaseHeldError):
        LeaseKeeper(sweep, say=said.append).acquire()
    LeaseKeeper(sweep, force=True, say=said.append).acquire().release()
    assert said[-1].endswith("--force")
    # A lease with fields of the wrong types holds nothing (and crashes nothing).
    (sweep / "lease.json").write_text(json.dumps({**lease, "heartbeat": "soon", "pid": "x"}))
    assert read_lease(sweep) is None
    LeaseKeeper(sweep, say=said.append).acquire().release()
    assert said[-1] == f"{sweep / 'lease.json'}: unreadable lease; taking it over"


RACE = (
    "import sys, time; from l2d.storage import Location; from sweeps.folder.lease import LeaseKeeper, LeaseHeldError\n"
    "started = time.time()\n"
    "try:\n    k = LeaseKeeper(Location.parse(sys.argv[1]), say=lambda t: None).acquire()\n"
    "    print(f'held {time.time() - started:.1f}', flush=True); time.sleep(4); k.release()\n"
    "except LeaseHeldError as e:\n    print(f'refused {time.time() - started:.1f}', flush=True)\n"
)


def _race(sweep, slow_env: dict, fast_env: dict, delay: float = 0.4) -> dict[str, tuple[str, float]]:
    """A slow driver (1.5 s between reading the lease and writing it, as on a slow store) and a fast one started just
    after it: ``{"slow": (held|refused, seconds it took), "fast": ...}``."""
    slow = subprocess.Popen(
        [sys.executable, "-c", RACE, str(sweep)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, **slow_env, "L2D_SWEEP_FAILPOINTS": "lease-swap=sleep:1.5"},
    )
    time.sleep(delay)
    fast = subprocess.Popen(
        [sys.executable, "-c", RACE, str(sweep)], stdout=subprocess.PIPE, text=True, env={**os.environ, **fast_env}
    )
    answers = {}
    for name, process in (("slow", slow), ("fast", fast)):
        word, seconds = process.communicate(timeout=120)[0].strip().split()
        answers[name] = (word, float(seconds))
    return answers


def _assert_the_fast_one_won(answers) -> None:
    # The slow driver read "no lease", then slept in the gap (the failpoint: it took >= 1.5 s), and meanwhile the fast
    # one took the lease; the slow one's compare-and-swap then failed. Were the store not slow, the slow one would
    # simply have won, and the race would prove nothing.
    assert answers["fast"][0] == "held" and answers["slow"][0] == "refused", answers
    assert answers["slow"][1] >= 1.5, answers


def test_two_drivers_racing_on_a_slow_store_never_both_hold_the_lease(tmp_path):
    # Without the compare-and-swap the slow one would write its lease over the fast one's and both would go on.
    for attempt in range(3):
        sweep = tmp_path / f"s{attempt}"
        sweep.mkdir()
        _assert_the_fast_one_won(_race(sweep, {}, {}))


def _cas_contract(store) -> None:
    """The compare-and-swap every lease store must keep, on creation, renewal, takeover and release."""
    assert store.read() == (None, None)
    first = store.swap("A", None)  # creation when absent
    assert first is not None and store.read()[0] == "A"
    assert store.swap("B", None) is None  # creation when present: refused
    renewed = store.swap("A2", first)  # renewal with the token read
    assert renewed is not None and store.read()[0] == "A2"
    assert store.swap("A3", first) is None  # renewal with a stale token: refused
    assert store.read()[0] == "A2"
    _, current = store.read()
    taken = store.swap("C", current)  # a takeover of what was read
    assert taken is not None and store.read()[0] == "C"
    assert store.swap("D", renewed) is None  # the previous holder's renewal after the takeover: refused
    assert store.delete(renewed) is False and store.read()[0] == "C"  # its release does not delete the new lease
    assert store.delete(taken) is True and store.read() == (None, None)


def test_the_local_lease_is_a_compare_and_swap(tmp_path):
    from sweeps.folder.lease import lease_store

    _cas_contract(lease_store(Location.parse(tmp_path / "sweep")))


def test_the_lease_on_s3_is_a_conditional_write(s3_server, tmp_path):
    pytest.importorskip("boto3")
    uri = f"s3://sweeps/lease-{tmp_path.name}?endpoint_override={s3_server}&scheme=http"
    sweep = Location.parse(uri)
    first = LeaseKeeper(sweep, say=lambda text: None).acquire()
    with pytest.raises(LeaseHeldError):
        LeaseKeeper(sweep, say=lambda text: None).acquire()
    first.release()
    assert read_lease(sweep) is None
    _assert_the_fast_one_won(_race(uri, {}, {}))
    from sweeps.folder.lease import lease_store

    _cas_contract(
        lease_store(Location.parse(f"s3://sweeps/cas-{tmp_path.name}?endpoint_override={s3_server}&scheme=http"))
    )


def test_a_driver_that_lost_its_lease_stops_without_writing(tmp_path):
    sweep = Location.parse(tmp_path / "s")
    script = (
        "import signal, sys, time; from l2d.storage import Location; from sweeps.folder.lease import LeaseKeeper\n"
        # a driver's Interrupts handles SIGINT whatever its parent ignores (a background job, a test runner's worker)
        "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
        "k = LeaseKeeper(Location.parse(sys.argv[1]), say=lambda t: None).acquire()\n"
        "print('held', flush=True); time.sleep(1.5); k.verify(); print('still writing', flush=True)\n"
    )
    driver = subprocess.Popen(
        [sys.executable, "-c", script, str(sweep)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert driver.stdout.readline().strip() == "held"
    LeaseKeeper(sweep, force=True, say=lambda text: None).acquire()  # another driver takes over
    out, err = driver.communicate(timeout=60)
    assert driver.returncode == 1 and "still writing" not in out
    assert "lost the lease" in err and "without writing anything more" in err


def test_a_driver_that_cannot_renew_its_lease_stops(tmp_path):
    script = (
        "import signal, sys, time; from l2d.storage import Location; from sweeps.folder.lease import LeaseKeeper\n"
        # a driver's Interrupts handles SIGINT whatever its parent ignores (a background job, a test runner's worker)
        "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
        "k = LeaseKeeper(Location.parse(sys.argv[1]), say=lambda t: None).acquire()\n"
        "print('held', flush=True)\n"
        "try:\n    time.sleep(60); print('never stopped', flush=True)\n"
        "except KeyboardInterrupt:\n    print('stopped', flush=True)\n"
    )
    start = time.time()
    driver = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "s")],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "L2D_SWEEP_LEASE_TIMEOUT": "4", "L2D_SWEEP_FAILPOINTS": "lease-renew=error"},
    )
    assert driver.stdout.split() == ["held", "stopped"], driver.stdout + driver.stderr
    assert "could not renew the lease" in driver.stderr and time.time() - start < 30


# --- the renewal thread, in this process (the subprocess tests above hold the same behaviour end to end; these let
# the mutation tests see it: mutmut maps the tests to the code they run in the test's own process) ---------------


@pytest.fixture
def fast_renewal(monkeypatch):
    """Renewal every 0.05 s; a driver that cannot renew stops after 2 s (half a 4 s timeout: room for a loaded
    machine's delays). SIGINT and os._exit recorded, not delivered."""
    import signal

    from sweeps.folder import lease as lease_module

    monkeypatch.setattr(lease_module, "HEARTBEAT_S", 0.05)
    monkeypatch.setattr(lease_module, "LEASE_TIMEOUT_S", 4.0)
    monkeypatch.setattr(lease_module, "stopped_because", None)
    monkeypatch.delenv("L2D_SWEEP_FAILPOINTS", raising=False)
    signals, exits = [], []
    real_kill = os.kill

    def kill(pid, sig):
        if sig == signal.SIGINT and pid == os.getpid():
            signals.append((time.time(), sig))
        else:
            real_kill(pid, sig)

    def leave(code):
        exits.append(code)
        raise SystemExit(code)  # ends the renewal thread, as the process's end would

    monkeypatch.setattr(os, "kill", kill)
    monkeypatch.setattr(os, "_exit", leave)
    return lease_module, signals, exits


def _heartbeat(sweep: Location) -> float:
    return json.loads((sweep / "lease.json").read_text())["heartbeat"]


def _wait(condition, seconds: float = 20.0) -> None:
    deadline = time.time() + seconds
    while not condition():
        assert time.time() < deadline, "timed out"
        time.sleep(0.01)


def test_the_renewal_keeps_the_lease_fresh_under_its_owner(tmp_path, fast_renewal):
    _, signals, exits = fast_renewal
    sweep = Location.parse(tmp_path / "s")
    keeper = LeaseKeeper(sweep, say=lambda text: None).acquire()
    first = json.loads((sweep / "lease.json").read_text())
    beats = [first["heartbeat"]]
    for _ in range(4):  # four renewals, each a compare-and-swap against the token of the one before
        _wait(lambda: _heartbeat(sweep) > beats[-1])
        beats.append(_heartbeat(sweep))
    now = json.loads((sweep / "lease.json").read_text())
    assert {k: v for k, v in now.items() if k != "heartbeat"} == {k: v for k, v in first.items() if k != "heartbeat"}
    # the keeper holds the token of what is on disk (read until a moment between two renewals: one lands every 0.05 s)
    _wait(lambda: keeper._token == (sweep / "lease.json").read_text())
    assert keeper.failure is None
    assert not signals and not exits
    keeper.release()
    assert not (sweep / "lease.json").exists() and not keeper._thread.is_alive()


def test_a_renewal_that_fails_for_half_the_timeout_stops_the_driver_and_a_recovery_resets_the_clock(
    tmp_path, fast_renewal, monkeypatch, caplog
):
    import signal

    lease_module, signals, exits = fast_renewal
    sweep = Location.parse(tmp_path / "s")
    keeper = LeaseKeeper(sweep, say=lambda text: None).acquire()
    caplog.set_level("WARNING", logger="sweeps.folder.lease")
    monkeypatch.setenv("L2D_SWEEP_FAILPOINTS", "lease-renew=error")  # the storage fails for 0.5 s...
    time.sleep(0.5)
    monkeypatch.delenv("L2D_SWEEP_FAILPOINTS")  # ...then answers again: renewed, the failure forgotten
    renewed = _heartbeat(sweep)
    _wait(lambda: _heartbeat(sweep) > renewed)
    assert not signals and keeper.failure is None
    monkeypatch.setenv("L2D_SWEEP_FAILPOINTS", "lease-renew=error")  # and fails for good
    failing = time.time()
    _wait(lambda: signals)
    assert signals[0][0] - failing >= 1.9  # half the timeout from this failure, not from the first one
    assert [sig for _, sig in signals] == [signal.SIGINT] and not exits
    assert keeper.failure.startswith(f"{sweep / 'lease.json'}: could not renew the lease for ")
    assert "failpoint lease-renew: a storage failure" in keeper.failure and "resume the sweep" in keeper.failure
    assert lease_module.stopped_because == keeper.failure
    warned = f"{sweep / 'lease.json'}: could not renew the lease (failpoint lease-renew: a storage failure)"
    assert warned in caplog.messages  # each failed renewal is logged, before any stop
    _wait(lambda: not keeper._thread.is_alive())  # it stops renewing once it has asked the driver to stop
    with pytest.raises(lease_module.LeaseError, match="could not renew the lease"):
        keeper.verify()
    keeper.release()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the recorded os._exit
def test_a_renewal_that_finds_another_owner_stops_the_process_without_touching_its_lease(
    tmp_path, fast_renewal, capsys
):
    _, signals, exits = fast_renewal
    sweep = Location.parse(tmp_path / "s")
    keeper = LeaseKeeper(sweep, say=lambda text: None).acquire()
    other = {**json.loads((sweep / "lease.json").read_text()), "owner": "someone-else", "user": "bob"}
    (sweep / "lease.json").write_text(json.dumps(other))  # another driver took it over (--force)
    _wait(lambda: exits)
    assert exits == [1] and not signals and keeper.lost.startswith("bob@")
    assert "lost the lease of" in capsys.readouterr().err
    keeper.release()  # its release leaves the new owner's lease alone
    assert json.loads((sweep / "lease.json").read_text())["owner"] == "someone-else"


def test_a_lease_names_its_command_cut_to_a_readable_length(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["l2d-sweep", "run", "x" * 1000])
    lease = Lease.mine()
    assert lease.command.startswith("l2d-sweep run xxx") and len(lease.command) == 300
    assert lease.pid == os.getpid() and lease.acquired == lease.heartbeat and len(lease.owner) == 32


def test_the_s3_lease_talks_to_the_endpoint_region_and_key_its_uri_names(monkeypatch):
    pytest.importorskip("boto3")
    from botocore.exceptions import ClientError

    from sweeps.folder.lease import _S3Lease

    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    store = _S3Lease(
        Location.parse("s3://bucket/runs/one?endpoint_override=10.0.0.1:9000&scheme=http&region=eu-west-3")
    )
    assert store.client.meta.endpoint_url == "http://10.0.0.1:9000" and store.client.meta.region_name == "eu-west-3"
    assert (store.bucket, store.key) == ("bucket", "runs/one/lease.json")
    store = _S3Lease(Location.parse("s3://bucket?endpoint_override=minio.local:9000"))
    assert store.client.meta.endpoint_url == "https://minio.local:9000" and store.key == "lease.json"
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://from-the-environment:9000")
    assert _S3Lease(Location.parse("s3://bucket/x")).client.meta.endpoint_url == "http://from-the-environment:9000"

    def refused(code):
        return ClientError({"Error": {"Code": code}} if code else {}, "PutObject")

    for code in ("PreconditionFailed", "ConditionalRequestConflict", "412", "409"):
        assert store._failed(refused(code)), code  # another writer won: the swap is refused, not an error
    for code in ("AccessDenied", "SlowDown", None):
        assert not store._failed(refused(code)), code


def test_a_keeper_that_never_held_the_lease_releases_nothing(tmp_path):
    sweep = Location.parse(tmp_path / "s")
    sweep.makedirs()
    (sweep / "lease.json").write_text("someone else's")
    LeaseKeeper(sweep, say=lambda text: None).release()  # a driver that failed before acquiring: nothing to undo
    assert (sweep / "lease.json").read_text() == "someone else's"


def test_the_s3_lease_reads_a_missing_object_as_no_lease_and_raises_the_rest(monkeypatch):
    """S3-compatible servers name a missing object ``NoSuchKey`` (AWS, moto) or ``404`` (some gateways); any other
    error, one without a code included, is raised."""
    pytest.importorskip("boto3")
    from botocore.exceptions import ClientError

    from sweeps.folder.lease import _S3Lease

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    store = _S3Lease(Location.parse("s3://bucket/x?endpoint_override=127.0.0.1:9&scheme=http"))

    def answering(response):
        def get_object(**_):
            raise ClientError(response, "GetObject")

        return get_object

    for code in ("NoSuchKey", "404"):
        monkeypatch.setattr(store.client, "get_object", answering({"Error": {"Code": code}}))
        assert store.read() == (None, None), code
    for response in ({"Error": {"Code": "AccessDenied"}}, {}):
        monkeypatch.setattr(store.client, "get_object", answering(response))
        with pytest.raises(ClientError):
            store.read()


def test_a_lease_removed_under_a_driver_is_not_another_owner(tmp_path, fast_renewal):
    """verify() stops the process at once only for another owner's lease: a lease gone (removed by hand, a store
    that lost it) is not one (the renewals then fail their compare-and-swap, and half the timeout later stop the
    driver as any storage failure does)."""
    _, signals, exits = fast_renewal
    sweep = Location.parse(tmp_path / "s")
    keeper = LeaseKeeper(sweep, say=lambda text: None).acquire()
    keeper._stop.set()  # no renewal while the lease is gone
    keeper._thread.join()
    (sweep / "lease.json").delete()
    keeper.verify()
    assert not exits and keeper.lost is None
    keeper.release()
