"""What a local sweep listens on, observed over the whole life of a trial whose two workers train with DDP.

The test runs a one-trial sweep (``workers_per_trial: 2``, a real TorchTrainer with a gloo process group), samples
every TCP socket in LISTEN state of every process descended from the driver (from /proc) twice a second until the
sweep ends, and gives each listener a name from its process: the listeners allowed are exactly those
docs/security.md lists by that name (the test checks that the page names each), each with the addresses and the
count allowed there. Anything else fails the test: a new listener must be kept on loopback or documented.

Ray 2.60 offers no bind option for its gRPC servers (GCS, raylet, every worker, the dashboard agent) and maps
127.0.0.1 to the node's address for its agents; torch's rendezvous store (TCPStore, in the rank-0 training worker)
binds all interfaces. What the project does keep on loopback, and this test checks: the dashboard, the gloo
connections between the training workers (``GLOO_SOCKET_IFNAME``), and no metrics exporter of the dashboard agent.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.ray,
    pytest.mark.timeout(900),
    pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs Linux's /proc"),
]

DOCS = Path(__file__).resolve().parents[2] / "docs" / "security.md"
LOOPBACK = ("127.", "::1", "::ffff:127.")
WILDCARD = ("0.0.0.0", "::")

#: name (as docs/security.md lists it) -> (how its process is recognised, where it may listen, how many wildcard
#: listeners one such process may have; None: any number).
ROLES = {
    "GCS": (lambda c: "gcs_server" in c, {"wildcard"}, None),
    "raylet": (lambda c: "raylet/raylet" in c, {"wildcard"}, None),
    "dashboard": (lambda c: "dashboard/dashboard.py" in c, {"loopback", "metrics"}, 0),
    "dashboard agent": (
        lambda c: "DashboardAgent" in c or "dashboard/agent.py" in c,
        {"wildcard", "node", "loopback"},
        1,
    ),
    "runtime-env agent": (lambda c: "RuntimeEnvAgent" in c or "runtime_env/agent" in c, {"node"}, 0),
    "autoscaler monitor": (lambda c: "autoscaler/_private/monitor.py" in c, {"metrics"}, 0),
    "log monitor": (lambda c: "log_monitor.py" in c, set(), 0),
    "training worker": (lambda c: c.startswith("ray::RayTrainWorker"), {"wildcard", "loopback", "store"}, 1),
    "Ray worker": (lambda c: c.startswith("ray::") or "default_worker.py" in c, {"wildcard"}, 1),
}


def _hex_address(text: str, family: int) -> tuple[str, int]:
    hex_address, hex_port = text.split(":")
    raw = bytes.fromhex(hex_address)
    if family == socket.AF_INET:
        address = socket.inet_ntop(family, raw[::-1])
    else:  # four little-endian 32-bit words
        address = socket.inet_ntop(family, b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4)))
    return address, int(hex_port, 16)


def _sockets() -> tuple[list[tuple[str, int, int]], list[tuple[int, int]]]:
    """``(listeners, connections)``: (address, port, inode) of every TCP socket in LISTEN state, and (remote port,
    inode) of every established one."""
    listening, established = [], []
    for table, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        if not Path(table).exists():
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A":
                listening.append((*_hex_address(fields[1], family), int(fields[9])))
            elif fields[3] == "01":
                established.append((_hex_address(fields[2], family)[1], int(fields[9])))
    return listening, established


def _processes() -> tuple[dict[int, int], dict[int, str], dict[int, int]]:
    """``(parent of each pid, command line of each pid, owning pid of each socket inode)``."""
    parents, commands, owners = {}, {}, {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        pid = int(proc.name)
        try:
            parents[pid] = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            commands[pid] = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            for fd in (proc / "fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    owners[int(target[8:-1])] = pid
        except OSError:
            continue
    return parents, commands, owners


def _descends(pid: int, root: int, parents: dict[int, int]) -> bool:
    for _ in range(64):
        if pid == root:
            return True
        pid = parents.get(pid, 1)
        if pid in (0, 1):
            return False
    return False


def _role(pid: int, command: str, driver: int) -> str:
    if pid == driver:
        return "driver"
    return next((name for name, (match, _, _) in ROLES.items() if match(command)), f"unknown ({command[:80]})")


def _where(address: str, port: int, node_ip: str) -> str:
    from ray.autoscaler._private.constants import AUTOSCALER_METRIC_PORT
    from ray.dashboard.consts import DASHBOARD_METRIC_PORT

    if address.startswith(LOOPBACK):
        return "loopback"
    if address in WILDCARD:
        return "metrics" if port in (AUTOSCALER_METRIC_PORT, DASHBOARD_METRIC_PORT) else "wildcard"
    return "node" if address.removeprefix("::ffff:") == node_ip else f"other address {address}"


def test_a_local_sweep_listens_only_where_the_docs_say(tiny_spec, tmp_path):
    from ray._private.services import get_node_ip_address

    path = tiny_spec(
        name="net",
        methods=["l2d"],
        budget={"num_samples": 1, "max_epochs": 2, "grace_period": 1, "reduction_factor": 2, "teacher_epochs": 1},
        resources={"workers_per_trial": 2, "cpus_per_worker": 1, "max_concurrent_trials": 1},
    )
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RAY_ADDRESS", "RAY_enable_metrics_collection", "GLOO_SOCKET_IFNAME")
    }
    # Each best epoch waits 15 s inside its write window: the process group stays up while the sockets are sampled.
    driver = subprocess.Popen(
        [sys.executable, "-m", "sweeps.cli", "run", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        env={**env, "PYTHONUNBUFFERED": "1", "L2D_SWEEP_FAILPOINTS": "best-unit=sleep:15"},
    )
    output: list[str] = []
    reader = threading.Thread(target=lambda: output.extend(driver.stdout), daemon=True)
    reader.start()
    node_ip = get_node_ip_address()
    seen: dict[tuple[int, str, int], tuple[str, str]] = {}  # (pid, address, port) -> (role, where)
    connected_to: dict[int, set[int]] = {}  # pid -> remote ports of its established connections
    # A process that is exiting has released its memory, and so its command line reads empty, before its files (and
    # sockets) are closed: it is named by the command line it had when last read.
    known: dict[int, str] = {}
    deadline = time.time() + 800
    while driver.poll() is None and time.time() < deadline:
        parents, commands, owners = _processes()
        known.update((pid, command) for pid, command in commands.items() if command)
        listening, established = _sockets()
        for address, port, inode in listening:
            pid = owners.get(inode)
            if pid is not None and _descends(pid, driver.pid, parents):
                seen[(pid, address, port)] = (
                    _role(pid, known.get(pid, ""), driver.pid),
                    _where(address, port, node_ip),
                )
        for remote_port, inode in established:
            pid = owners.get(inode)
            if pid is not None and _descends(pid, driver.pid, parents):
                connected_to.setdefault(pid, set()).add(remote_port)
        time.sleep(0.5)
    driver.wait(timeout=60)
    reader.join(10)
    story = "".join(output)[-3000:]
    assert driver.returncode == 0, story

    # The store: a wildcard listener of one training worker that the other training worker is connected to.
    trainers = {pid for (pid, _, _), (role, _) in seen.items() if role == "training worker"}
    stores = {
        (pid, port)
        for (pid, _, port), (role, where) in seen.items()
        if role == "training worker"
        and where == "wildcard"
        and any(port in connected_to.get(other, ()) for other in trainers - {pid})
    }
    violations, wildcards = [], {}
    for (pid, address, port), (role, where) in sorted(seen.items()):
        if (pid, port) in stores:
            where = "store"
        if role == "driver":
            allowed = ({"wildcard"}, 1)
        elif role in ROLES:
            allowed = (ROLES[role][1], ROLES[role][2])
        else:
            allowed = (set(), 0)
        if where not in allowed[0]:
            violations.append(f"{role} pid {pid} on {address}:{port} ({where})")
        if where == "wildcard":
            wildcards[pid] = wildcards.get(pid, 0) + 1
            if allowed[1] is not None and wildcards[pid] > allowed[1]:
                violations.append(
                    f"{role} pid {pid}: {wildcards[pid]} listeners on all interfaces (at most "
                    f"{allowed[1]}), the last {address}:{port}"
                )
    listing = "\n".join(
        f"{role:18} {'store' if (pid, port) in stores else where:9} {address}:{port} pid {pid}"
        for (pid, address, port), (role, where) in sorted(seen.items(), key=lambda kv: kv[1])
    )
    print(f"\nlisteners of a local sweep with a 2-worker DDP trial:\n{listing}")
    assert len(trainers) == 2, listing + story  # both DDP workers were observed
    assert len(stores) == 1, listing  # torch's rendezvous store, connected to by the other rank
    gloo = [k for k, (role, where) in seen.items() if role == "training worker" and where == "loopback"]
    assert {pid for pid, _, _ in gloo} == trainers, listing  # each rank's gloo listener is on loopback
    assert any(role == "dashboard" and where == "loopback" for role, where in seen.values()), listing
    assert not violations, "listeners not documented in docs/security.md:\n" + "\n".join(violations) + "\n" + listing

    # Every name allowed here is the one the docs use.
    table = DOCS.read_text().split("<!-- listeners:start -->", 1)[1].split("<!-- listeners:end -->", 1)[0]
    documented = {m.group(1) for m in re.finditer(r"^\| \*\*([^*]+)\*\* \|", table, re.M)}
    assert documented == set(ROLES) | {"driver", "training worker's rendezvous store"}, documented
