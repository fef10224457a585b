"""A local sweep listens on loopback wherever Ray 2.60 allows it.

The test runs a small sweep, lists the TCP sockets in LISTEN state of every process of its Ray session (from
/proc), and fails on any non-loopback listener the project could avoid. What Ray does not let a local cluster
avoid, and README's Reliability section documents:

- the GCS, the raylet, every worker (the driver included) and the dashboard agent run gRPC servers on all
  interfaces: Ray has no bind option for them (token authentication guards them);
- the dashboard agent's HTTP server and the runtime-env agent listen on the node's address (Ray maps 127.0.0.1 to
  it, ``ray._private.services.resolve_ip_for_localhost``);
- the autoscaler monitor and the dashboard head serve Prometheus metrics on 0.0.0.0 at their fixed ports (they bind
  to loopback only when the node's address is loopback, which the previous point rules out).

What the project does avoid, and this test checks: the dashboard on 127.0.0.1, and no metrics exporter of the
dashboard agent (``RAY_enable_metrics_collection=false``) on 0.0.0.0.
"""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.timeout(600),
              pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs Linux's /proc")]

LOOPBACK = ("127.", "::1", "::ffff:127.")
WILDCARD = ("0.0.0.0", "::")


def _listeners() -> list[tuple[str, int, int]]:
    """(address, port, socket inode) of every TCP socket in LISTEN state."""
    found = []
    for table, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        if not Path(table).exists():
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A":  # LISTEN
                continue
            hex_address, hex_port = fields[1].split(":")
            raw = bytes.fromhex(hex_address)
            if family == socket.AF_INET:
                address = socket.inet_ntop(family, raw[::-1])
            else:  # four little-endian 32-bit words
                address = socket.inet_ntop(family, b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4)))
            found.append((address, int(hex_port, 16), int(fields[9])))
    return found


def _socket_owners() -> dict[int, tuple[int, str]]:
    """socket inode -> (pid, command line) for every process we can read."""
    owners = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            for fd in (proc / "fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    owners[int(target[8:-1])] = (int(proc.name), command)
        except OSError:
            continue
    return owners


def _classify(address: str, port: int, command: str, node_ip: str) -> str | None:
    """Why Ray cannot avoid this listener, or None when the project could have."""
    from ray.autoscaler._private.constants import AUTOSCALER_METRIC_PORT
    from ray.dashboard.consts import DASHBOARD_METRIC_PORT

    if address.startswith(LOOPBACK):
        return "loopback"
    wildcard = address in WILDCARD
    if wildcard and any(name in command for name in ("gcs_server", "raylet", "ray::", "default_worker.py",
                                                      "sweeps.cli")):
        return "gRPC on all interfaces (no bind option)"
    if wildcard and "monitor.py" in command and port == AUTOSCALER_METRIC_PORT:
        return "autoscaler Prometheus endpoint"
    if wildcard and "dashboard.py" in command and port == DASHBOARD_METRIC_PORT:
        return "dashboard Prometheus endpoint"
    if address == node_ip and any(name in command for name in ("ray::DashboardAgent", "ray::RuntimeEnvAgent",
                                                               "dashboard/agent.py", "runtime_env/agent")):
        return "agent on the node address (Ray maps 127.0.0.1 to it)"
    return None


def test_a_local_sweep_listens_on_loopback_where_ray_allows(tiny_spec, tmp_path):
    from ray._private.services import get_node_ip_address

    path = tiny_spec(name="net", methods=["l2d"], budget={"num_samples": 1, "max_epochs": 3, "grace_period": 1,
                                                           "reduction_factor": 2, "teacher_epochs": 1})
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_enable_metrics_collection")}
    driver = subprocess.Popen([sys.executable, "-m", "sweeps.cli", "run", str(path)], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, env={**env, "PYTHONUNBUFFERED": "1"},
                              start_new_session=True)
    lines = []
    for line in driver.stdout:
        lines.append(line)
        if " epoch 1/3: " in line:
            break
    assert any(" epoch 1/3: " in line for line in lines), "".join(lines)[-3000:]
    time.sleep(1)
    owners = _socket_owners()
    session = {pid for pid, _ in owners.values() if _in_group(pid, driver.pid)}
    node_ip = get_node_ip_address()
    seen, avoidable = [], []
    for address, port, inode in _listeners():
        pid, command = owners.get(inode, (None, ""))
        if pid not in session:
            continue
        why = _classify(address, port, command, node_ip)
        seen.append((address, port, command, why))
        if why is None:
            avoidable.append((address, port, command[:120]))
    rest, _ = driver.communicate(timeout=500)
    assert driver.returncode == 0, "".join(lines)[-2000:] + rest[-2000:]
    assert any("gcs_server" in c for _, _, c, _ in seen), "\n".join(map(str, seen))  # the session was found
    assert any(a.startswith("127.") and "dashboard.py" in c for a, _, c, _ in seen), seen  # the dashboard
    assert not avoidable, f"listeners the project could keep on loopback: {avoidable}"


def _in_group(pid: int, group: int) -> bool:
    try:
        return os.getpgid(pid) == group
    except OSError:
        return False
