"""cluster/local.sh: a fake `ray` records the arguments of start/stop/status; a real start and stop shows that
stopping ends only the nodes local.sh started (never the machine-wide stop), leaving any other Ray running."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from conftest import REPO, free_port

LOCAL_SH = REPO / "cluster" / "local.sh"


def _run_local(*args, env_extra=None, timeout=60):
    drop = ("RAY_ADDRESS", "RAY_BIN", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(env_extra or {})
    return subprocess.run([str(LOCAL_SH), *args], capture_output=True, text=True, env=env, timeout=timeout)


@pytest.fixture
def fake_ray(tmp_path):
    """A `ray` that logs its arguments; with --block it says it started and stays up, like the real one."""
    log = tmp_path / "calls.log"
    bindir = tmp_path / "fakebin"
    bindir.mkdir()
    exe = bindir / "ray"
    exe.write_text(
        "#!/bin/bash\n"
        f'echo "$* | PATH0=${{PATH%%:*}} AUTH=$RAY_AUTH_MODE" >> "{log}"\n'
        'if [[ " $* " == *" --block "* ]]; then echo "Ray runtime started."; exec sleep 300; fi\n')
    exe.chmod(0o755)
    home = tmp_path / "home"  # no ~/.ray/auth_token unless a test writes one
    home.mkdir()
    env = {"RAY_BIN": str(exe), "SKINRAY_DASHBOARD_WAIT_S": "0", "HOME": str(home),
           "SKINRAY_LOCAL_STATE": str(tmp_path / "state"), "SKINRAY_STOP_WAIT_S": "5"}
    return env, log, bindir


def test_local_sh_syntax_and_mode():
    subprocess.run(["bash", "-n", str(LOCAL_SH)], check=True)
    assert LOCAL_SH.stat().st_mode & stat.S_IXUSR, "chmod +x cluster/local.sh"
    text = LOCAL_SH.read_text()
    assert text.startswith("#!/usr/bin/env bash") and "set -euo pipefail" in text
    assert not re.search(r'"\$\{ray\}"\s+stop|\bray stop\b(?!\')', text.replace("'ray stop'", "")), \
        "local.sh must stop its own nodes by PID, never every Ray on the machine"


def test_local_sh_help():
    r = _run_local("--help")
    assert r.returncode == 0, r.stderr
    for word in ("start", "stop", "status", "--num-cpus", "--num-gpus", "--port", "--dashboard-port", "--workers",
                 "--start-timeout", "PIDs"):
        assert word in r.stdout, word


@pytest.mark.parametrize("args", [(), ("bogus",), ("start", "--bogus"), ("start", "--port"), ("start", "--workers", "x"),
                                  ("stop", "--force"), ("stop", "--port", "x")])
def test_local_sh_bad_usage(args, fake_ray):
    env, log, _ = fake_ray
    r = _run_local(*args, env_extra=env)
    assert r.returncode != 0
    assert "Usage" in r.stderr or "--help" in r.stderr
    assert not log.exists(), "ray must not be called on bad usage"


def test_local_sh_start_stop_status(fake_ray, tmp_path):
    env, log, bindir = fake_ray
    r = _run_local(
        "start", "--num-cpus", "2", "--num-gpus", "0", "--port", "6390", "--dashboard-port", "8399",
        "--workers", "2", "--worker-cpus", "1", env_extra=env,
    )
    assert r.returncode == 0, r.stderr
    assert "RAY_ADDRESS=http://127.0.0.1:8399" in r.stdout and "127.0.0.1:6390" in r.stdout
    calls = log.read_text().splitlines()
    assert len(calls) == 3, calls
    head, w1, w2 = calls
    assert head.startswith("start --head ") and "--block" in head
    for expected in ("--port 6390", "--include-dashboard=true", "--dashboard-host 127.0.0.1",
                     "--dashboard-port 8399", "--num-cpus 2", "--num-gpus 0"):
        assert expected in head, expected
    for w in (w1, w2):
        assert w.startswith("start --address 127.0.0.1:6390 ") and "--block" in w
        assert "--num-cpus 1" in w and "--num-gpus 0" in w and "--head" not in w
    # every node gets its own dashboard-agent port (job submission needs the head's)
    agent_ports = [int(re.search(r"--dashboard-agent-listen-port (\d+)", c).group(1)) for c in calls]
    assert len(set(agent_ports)) == 3 and agent_ports == sorted(agent_ports)
    # the ray's folder is first on PATH, so job entrypoints' `python` is its venv's;
    # no token anywhere -> auth explicitly disabled
    assert all(c.endswith(f"PATH0={bindir} AUTH=disabled") for c in calls)
    assert "RAY_AUTH_MODE=token" not in r.stdout
    state = tmp_path / "state" / "skinray-local-6390"
    pids = [int(line.split()[0]) for line in (state / "pids").read_text().splitlines()]
    assert len(pids) == 3 and all(_alive(p) for p in pids)
    again = _run_local("start", "--port", "6390", env_extra=env)
    assert again.returncode == 2 and "stop --port 6390" in again.stderr  # never two clusters on one record

    log.unlink()
    stop = _run_local("stop", "--port", "6390", env_extra=env)
    assert stop.returncode == 0, stop.stderr
    assert not any(_alive(p) for p in pids) and not state.exists()
    assert _run_local("status", "--port", "6390", env_extra=env).returncode == 0
    assert [c.split(" | ")[0] for c in log.read_text().splitlines()] == ["status --address 127.0.0.1:6390"]
    nothing = _run_local("stop", "--port", "6390", env_extra=env)
    assert nothing.returncode == 0 and "nothing to stop" in nothing.stdout


def test_local_sh_token_auth(fake_ray):
    env, log, _ = fake_ray
    token_dir = Path(env["HOME"]) / ".ray"
    token_dir.mkdir()
    (token_dir / "auth_token").write_text("x" * 32)
    r = _run_local("start", "--agent-port", "40111", "--port", "6391", env_extra=env)
    assert r.returncode == 0, r.stderr
    (gen, head) = log.read_text().splitlines()
    assert gen.startswith("get-auth-token --generate ") and gen.endswith("AUTH=token")
    assert head.startswith("start --head ") and head.endswith("AUTH=token")
    assert "--dashboard-agent-listen-port 40111" in head
    assert "RAY_AUTH_MODE=token" in r.stdout  # clients are told to set it
    assert _run_local("stop", "--port", "6391", env_extra=env).returncode == 0
    log.unlink()
    assert _run_local("status", env_extra=env).returncode == 0
    assert log.read_text().strip().endswith("AUTH=token")


def test_a_node_that_dies_at_start_is_reported_and_cleaned_up(fake_ray, tmp_path):
    env, log, bindir = fake_ray
    (bindir / "ray").write_text("#!/bin/bash\necho 'node timed out during startup' >&2; exit 1\n")
    r = _run_local("start", "--port", "6392", env_extra=env)
    assert r.returncode == 1 and "exited before it started" in r.stderr and "timed out" in r.stderr
    assert not (tmp_path / "state" / "skinray-local-6392").exists()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except (ProcessLookupError, FileNotFoundError):
        return False


@pytest.mark.slow
def test_stop_leaves_an_unrelated_ray_running(ray_session, tmp_path):
    """The test session's own Ray stands for someone else's training on a shared host: it must survive."""
    ray = ray_session

    @ray.remote
    def ping() -> int:
        return 1

    assert ray.get(ping.remote()) == 1
    port, dash = free_port(), free_port()
    temp_dir = f"/tmp/skl-{uuid.uuid4().hex[:6]}"
    env = {"RAY_AUTH_MODE": "disabled", "SKINRAY_LOCAL_STATE": str(tmp_path),
           "RAY_BIN": str(REPO / ".venv" / "bin" / "ray")}
    start = _run_local("start", "--num-cpus", "1", "--workers", "1", "--port", str(port), "--dashboard-port",
                       str(dash), "--", "--temp-dir", temp_dir, env_extra=env, timeout=900)
    assert start.returncode == 0, start.stdout + start.stderr
    nodes = [int(line.split()[0]) for line in (tmp_path / f"skinray-local-{port}" / "pids").read_text().splitlines()]
    mine = set(nodes)
    for pid in nodes:  # each node's processes: gcs, raylet, agents, workers
        mine |= _descendants(pid)
    assert len(nodes) == 2 and len(mine) >= 6
    stop = _run_local("stop", "--port", str(port), env_extra=env, timeout=300)
    assert stop.returncode == 0, stop.stdout + stop.stderr
    deadline = time.time() + 30
    while time.time() < deadline and any(_alive(p) for p in mine):
        time.sleep(1)
    assert not [p for p in mine if _alive(p)], "every process of the two nodes is gone"
    assert ray.get(ping.remote()) == 1  # and the other Ray still answers


def _descendants(pid: int) -> set[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    found = {int(p) for p in out}
    for child in list(found):
        found |= _descendants(child)
    return found
