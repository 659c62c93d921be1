"""Static checks of the cluster/ configs: no Ray cluster is started.

Covers the Ray cluster launcher config for AWS (also validated with Ray's own
autoscaler schema and config preparation, i.e. what `ray up` checks before it
calls AWS), the KubeRay RayJob, the Kubernetes CronJob, the crontab line and
cluster/local.sh (with a fake `ray` binary).
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
from pathlib import Path

import pytest
import ray
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
CLUSTER = REPO_ROOT / "cluster"
AWS_YAML = CLUSTER / "aws-gpu.yaml"
RAYJOB_YAML = CLUSTER / "kuberay-rayjob.yaml"
CRONJOB_YAML = CLUSTER / "cron" / "k8s-cronjob.yaml"
CRONTAB = CLUSTER / "cron" / "skinray-nightly.cron"
LOCAL_SH = CLUSTER / "local.sh"
NODE_SETUP_SH = CLUSTER / "aws-node-setup.sh"

RAY_MAJOR_MINOR = tuple(ray.__version__.split(".")[:2])
JOB_PATH_RE = re.compile(r"(?<![\w/.-])jobs/[\w./-]+\.py\b")
IMAGE_RE = re.compile(r"^rayproject/ray:(\d+)\.(\d+)\.(\d+)(-py\d+)?(-gpu)?$")


def _load(path: Path):
    with path.open() as f:
        return yaml.safe_load(f)


def _cluster_text_files() -> list[Path]:
    files = [p for p in CLUSTER.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    assert files
    return sorted(files)


# --------------------------------------------------------------------------- #
# Shared checks
# --------------------------------------------------------------------------- #


def test_no_aws_credentials_in_cluster_files():
    pattern = re.compile(r"AKIA[0-9A-Z]{12,}|ASIA[0-9A-Z]{12,}|aws_secret_access_key|aws_access_key_id|aws_session_token", re.I)
    for path in _cluster_text_files():
        text = path.read_text(errors="replace")
        assert "AKIA" not in text, path
        assert not pattern.search(text), f"credential-like string in {path}"


def test_every_jobs_entrypoint_mentioned_exists():
    mentioned: dict[str, set[str]] = {}
    for path in _cluster_text_files():
        for m in JOB_PATH_RE.findall(path.read_text(errors="replace")):
            mentioned.setdefault(m, set()).add(str(path.relative_to(REPO_ROOT)))
    assert "jobs/score.py" in mentioned
    missing = {p: sorted(where) for p, where in mentioned.items() if not (REPO_ROOT / p).is_file()}
    assert not missing, f"entrypoints named in cluster/ but missing in the repo: {missing}"


def test_constraints_file_exists_and_pins_installed_ray():
    constraints = CLUSTER / "constraints.txt"
    assert constraints.is_file(), "cluster/constraints.txt is installed with -c by the cluster configs"
    for line in constraints.read_text().splitlines():
        m = re.match(r"^\s*ray(\[[^\]]*\])?\s*==\s*([\w.]+)", line)
        if m:
            assert m.group(2) == ray.__version__, (
                f"constraints pin ray=={m.group(2)} but the images/rayVersion use {ray.__version__}"
            )


# --------------------------------------------------------------------------- #
# AWS cluster launcher config
# --------------------------------------------------------------------------- #


@pytest.fixture(scope="module")
def aws():
    return _load(AWS_YAML)


def _worker_types(cfg):
    return {k: v for k, v in cfg["available_node_types"].items() if k != cfg["head_node_type"]}


def test_aws_top_level(aws):
    for key in ("cluster_name", "max_workers", "provider", "auth", "available_node_types", "head_node_type"):
        assert key in aws, key
    assert aws["provider"]["type"] == "aws"
    assert re.fullmatch(r"[a-z]{2}(-[a-z]+)+-\d", aws["provider"]["region"])
    assert isinstance(aws["provider"].get("cache_stopped_nodes"), bool)
    assert aws["auth"]["ssh_user"]
    assert aws["head_node_type"] in aws["available_node_types"]


def test_aws_node_types(aws):
    types = aws["available_node_types"]
    for name, nt in types.items():
        assert isinstance(nt.get("node_config"), dict) and nt["node_config"].get("InstanceType"), name
        assert isinstance(nt.get("resources"), dict), name
        assert nt["node_config"].get("ImageId", "").startswith("ami-"), name
    workers = _worker_types(aws)
    assert workers
    for name, nt in workers.items():
        assert isinstance(nt.get("min_workers"), int) and isinstance(nt.get("max_workers"), int), name
        assert 0 <= nt["min_workers"] <= nt["max_workers"] <= aws["max_workers"], name
    assert aws["max_workers"] >= sum(nt["min_workers"] for nt in workers.values())

    gpu = [n for n, nt in workers.items() if nt["resources"].get("GPU", 0) >= 1]
    cpu = [n for n, nt in workers.items() if not nt["resources"].get("GPU") and nt["resources"].get("CPU", 0) >= 1]
    assert gpu, "a GPU worker group is needed for training and GPU scoring"
    assert cpu, "a CPU worker group is needed for decode"
    assert all(workers[n]["node_config"]["InstanceType"].startswith(("g", "p")) for n in gpu)


def test_aws_instance_profiles(aws):
    # S3 through instance profiles: every node type, including the workers
    # (Ray only adds a default profile to the head).
    for name, nt in aws["available_node_types"].items():
        prof = nt["node_config"].get("IamInstanceProfile")
        assert isinstance(prof, dict) and (prof.get("Arn") or prof.get("Name")), name
        if prof.get("Arn"):
            assert re.fullmatch(r"arn:aws:iam::\d{12}:instance-profile/[\w+=,.@/-]+", prof["Arn"]), name


def test_aws_commands(aws):
    head = " ; ".join(aws["head_start_ray_commands"])
    worker = " ; ".join(aws["worker_start_ray_commands"])
    assert aws["head_start_ray_commands"][0].strip() == "ray stop"
    assert aws["worker_start_ray_commands"][0].strip() == "ray stop"
    assert "ray start --head" in head
    assert "--autoscaling-config=~/ray_bootstrap_config.yaml" in head
    assert "--dashboard-host=0.0.0.0" in head
    assert "--address=$RAY_HEAD_IP:6379" in worker

    # file_mounts syncs the repo to ~/skinray; setup scripts referenced as
    # ~/skinray/<path> must exist in the repo.
    mounts = aws["file_mounts"]
    assert mounts.get("~/skinray") == "."
    commands = list(aws.get("setup_commands", []))
    for nt in aws["available_node_types"].values():
        commands += nt.get("worker_setup_commands", [])
    assert commands
    for cmd in commands:
        for rel in re.findall(r"~/skinray/([\w./-]+)", cmd):
            assert (REPO_ROOT / rel).is_file(), rel
    setup = NODE_SETUP_SH.read_text()
    assert "-c" in setup and "cluster/constraints.txt" in setup


def test_aws_config_against_ray_schema(aws):
    import jsonschema

    schema_path = Path(ray.__file__).parent / "autoscaler" / "ray-schema.json"
    if not schema_path.is_file():
        pytest.skip(f"{schema_path} not shipped with this ray")
    schema = json.loads(schema_path.read_text())
    jsonschema.validate(aws, schema)


def test_aws_config_passes_ray_up_preparation(aws):
    # What `ray up` does before contacting AWS: merge with the provider's
    # defaults.yaml, then validate (schema + head type + min/max workers).
    try:
        from ray.autoscaler._private.util import prepare_config, validate_config
    except ImportError:  # private API moved
        pytest.skip("ray.autoscaler._private.util not available")
    prepared = prepare_config(yaml.safe_load(AWS_YAML.read_text()))
    validate_config(prepared)
    # The defaults' head_setup_commands install boto3 for the autoscaler; if
    # they are overridden, the setup must install it.
    if not any("boto3" in c for c in prepared["head_setup_commands"]):
        assert "boto3" in NODE_SETUP_SH.read_text()


def test_node_setup_script_syntax():
    subprocess.run(["bash", "-n", str(NODE_SETUP_SH)], check=True)


# --------------------------------------------------------------------------- #
# KubeRay RayJob
# --------------------------------------------------------------------------- #


@pytest.fixture(scope="module")
def rayjob():
    return _load(RAYJOB_YAML)


def _check_image(image: str, gpu: bool):
    m = IMAGE_RE.match(image)
    assert m, image
    assert (m.group(1), m.group(2)) == RAY_MAJOR_MINOR, f"{image} vs installed ray {ray.__version__}"
    assert bool(m.group(5)) == gpu, image


def test_rayjob_basics(rayjob):
    assert rayjob["apiVersion"] == "ray.io/v1"
    assert rayjob["kind"] == "RayJob"
    spec = rayjob["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    assert isinstance(spec["ttlSecondsAfterFinished"], int) and spec["ttlSecondsAfterFinished"] >= 0
    assert spec["submissionMode"] == "K8sJobMode"
    entry = spec["entrypoint"]
    assert re.match(r"^python (jobs/[\w/]+\.py)\b", entry)
    assert (REPO_ROOT / JOB_PATH_RE.search(entry).group(0)).is_file()
    for flag in ("--model", "--input-root", "--out", "--date"):
        assert f"{flag} " in entry, flag


def test_rayjob_date_placeholder_renders_valid_name(rayjob):
    text = RAYJOB_YAML.read_text()
    assert "--date __SCORE_DATE__" in rayjob["spec"]["entrypoint"]
    rendered = yaml.safe_load(text.replace("__SCORE_DATE__", "2025-01-31"))
    name = rendered["metadata"]["name"]
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name) and len(name) <= 63, name
    assert "--date 2025-01-31" in rendered["spec"]["entrypoint"]
    assert "__SCORE_DATE__" not in yaml.safe_dump(rendered)


def test_rayjob_runtime_env(rayjob):
    from ray.runtime_env import RuntimeEnv

    env = yaml.safe_load(rayjob["spec"]["runtimeEnvYAML"])
    assert isinstance(env, dict)
    assert set(env) <= {"working_dir", "pip", "env_vars", "py_modules", "uv", "config"}, set(env)
    RuntimeEnv(**env)  # Ray's own validation (fields, URI types, pip options)
    assert env["working_dir"].endswith(".zip")
    pkgs = env["pip"]["packages"] if isinstance(env["pip"], dict) else env["pip"]
    assert any(p.startswith("-c ") and p.endswith("cluster/constraints.txt") for p in pkgs)
    assert all(isinstance(v, str) for v in env.get("env_vars", {}).values())
    assert "AWS_REGION" in env["env_vars"]


def test_rayjob_cluster_spec(rayjob):
    rcs = rayjob["spec"]["rayClusterSpec"]
    assert str(rcs["rayVersion"]) == ray.__version__
    head = rcs["headGroupSpec"]["template"]["spec"]
    (head_c,) = head["containers"]
    _check_image(head_c["image"], gpu=False)
    assert any(p["containerPort"] == 8265 for p in head_c["ports"])
    assert head_c["resources"]["limits"]
    assert head.get("serviceAccountName")

    groups = rcs["workerGroupSpecs"]
    assert groups
    for g in groups:
        assert 0 <= g["minReplicas"] <= g["replicas"] <= g["maxReplicas"], g["groupName"]
        spec = g["template"]["spec"]
        assert spec.get("serviceAccountName") == head["serviceAccountName"]
        (c,) = spec["containers"]
        gpus = int(c["resources"]["limits"].get("nvidia.com/gpu", 0))
        _check_image(c["image"], gpu=gpus > 0)
    gpu_groups = [g for g in groups if int(g["template"]["spec"]["containers"][0]["resources"]["limits"].get("nvidia.com/gpu", 0)) >= 1]
    assert gpu_groups
    for g in gpu_groups:
        spec = g["template"]["spec"]
        assert spec.get("nodeSelector") or spec.get("affinity")
        assert any(t.get("key") == "nvidia.com/gpu" for t in spec.get("tolerations", []))


# --------------------------------------------------------------------------- #
# Schedules
# --------------------------------------------------------------------------- #

_CRON_RANGES = [(0, 59), (0, 23), (1, 31), (1, 12), (0, 7)]
_MONTHS = {m: i + 1 for i, m in enumerate("jan feb mar apr may jun jul aug sep oct nov dec".split())}
_DAYS = {d: i for i, d in enumerate("sun mon tue wed thu fri sat".split())}


def _valid_cron_field(field: str, idx: int) -> bool:
    lo, hi = _CRON_RANGES[idx]
    names = _MONTHS if idx == 3 else _DAYS if idx == 4 else {}
    for part in field.split(","):
        base, slash, step = part.partition("/")
        if slash and not (step.isdigit() and int(step) > 0):
            return False
        if base == "*":
            continue
        bounds = base.split("-")
        if len(bounds) > 2:
            return False
        values = []
        for b in bounds:
            b = b.lower()
            if b in names:
                values.append(names[b])
            elif b.isdigit() and lo <= int(b) <= hi:
                values.append(int(b))
            else:
                return False
        if len(values) == 2 and values[0] > values[1]:
            return False
    return True


def _valid_schedule(fields: list[str]) -> bool:
    return len(fields) == 5 and all(_valid_cron_field(f, i) for i, f in enumerate(fields))


@pytest.mark.parametrize(
    "expr,ok",
    [("0 2 * * *", True), ("*/15 0-6 1,15 jan-jun mon-fri", True), ("60 2 * * *", False), ("0 2 * *", False), ("0 2 * * 8", False)],
)
def test_cron_validator(expr, ok):
    assert _valid_schedule(expr.split()) is ok


def test_k8s_cronjob():
    docs = [d for d in yaml.safe_load_all(CRONJOB_YAML.read_text()) if d]
    (cj,) = [d for d in docs if d.get("kind") == "CronJob"]
    assert cj["apiVersion"] == "batch/v1"
    spec = cj["spec"]
    assert _valid_schedule(spec["schedule"].split()), spec["schedule"]
    assert spec["concurrencyPolicy"] == "Forbid"
    pod = spec["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["restartPolicy"] in ("Never", "OnFailure")
    (c,) = pod["containers"]
    script = "\n".join(c.get("args", []) + c.get("command", [])[2:])
    assert "__SCORE_DATE__" in script and "kubectl create" in script
    subprocess.run(["sh", "-n", "-c", c["args"][0]], check=True)

    # the template it renders is mounted from a ConfigMap
    mounted = {v["name"]: v for v in pod["volumes"]}
    (mount,) = [m for m in c["volumeMounts"] if m["name"] in mounted]
    assert f"{mount['mountPath']}/{RAYJOB_YAML.name}" in script
    assert mounted[mount["name"]]["configMap"]["name"]

    # RBAC: its ServiceAccount may create RayJobs
    sa = pod["serviceAccountName"]
    assert any(d["kind"] == "ServiceAccount" and d["metadata"]["name"] == sa for d in docs)
    roles = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Role"}
    bindings = [d for d in docs if d["kind"] == "RoleBinding" and any(s["name"] == sa for s in d["subjects"])]
    assert bindings
    rules = roles[bindings[0]["roleRef"]["name"]]["rules"]
    assert any("ray.io" in r["apiGroups"] and "rayjobs" in r["resources"] and "create" in r["verbs"] for r in rules)


def _crontab_entries():
    entries = []
    for line in CRONTAB.read_text().splitlines():
        s = line.strip()
        if not s or s.startswith("#") or re.match(r"^[A-Za-z_][A-Za-z0-9_]*\s*=", s):
            continue
        entries.append(s)
    return entries


def test_crontab_line():
    entries = _crontab_entries()
    assert len(entries) == 1, entries
    parts = entries[0].split(None, 5)
    assert len(parts) == 6
    assert _valid_schedule(parts[:5]), parts[:5]
    command = parts[5]
    assert "ray job submit" in command and "jobs/score.py" in command
    assert re.search(r"--date \"?\$\(date -u \+\\%F\)", command)
    # an unescaped % would end the command at that point
    assert not re.search(r"(?<!\\)%", command), "escape % as \\% in crontab"
    subprocess.run(["sh", "-n", "-c", command.replace("\\%", "%")], check=True)


# --------------------------------------------------------------------------- #
# cluster/local.sh (never starts Ray: a fake `ray` records its arguments)
# --------------------------------------------------------------------------- #


def _run_local(*args, env_extra=None):
    drop = ("RAY_ADDRESS", "RAY_BIN", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(env_extra or {})
    return subprocess.run([str(LOCAL_SH), *args], capture_output=True, text=True, env=env, timeout=60)


@pytest.fixture
def fake_ray(tmp_path):
    log = tmp_path / "calls.log"
    bindir = tmp_path / "fakebin"
    bindir.mkdir()
    exe = bindir / "ray"
    exe.write_text(f'#!/bin/sh\necho "$* | PATH0=${{PATH%%:*}} AUTH=$RAY_AUTH_MODE" >> "{log}"\n')
    exe.chmod(0o755)
    home = tmp_path / "home"  # no ~/.ray/auth_token unless a test writes one
    home.mkdir()
    env = {"RAY_BIN": str(exe), "SKINRAY_DASHBOARD_WAIT_S": "0", "HOME": str(home)}
    return env, log, bindir


def test_local_sh_syntax_and_mode():
    subprocess.run(["bash", "-n", str(LOCAL_SH)], check=True)
    assert LOCAL_SH.stat().st_mode & stat.S_IXUSR, "chmod +x cluster/local.sh"
    assert LOCAL_SH.read_text().startswith("#!/usr/bin/env bash")
    assert "set -euo pipefail" in LOCAL_SH.read_text()


def test_local_sh_help():
    r = _run_local("--help")
    assert r.returncode == 0, r.stderr
    for word in ("start", "stop", "status", "--num-cpus", "--num-gpus", "--port", "--dashboard-port", "--workers"):
        assert word in r.stdout, word


@pytest.mark.parametrize("args", [(), ("bogus",), ("start", "--bogus"), ("start", "--port"), ("start", "--workers", "x")])
def test_local_sh_bad_usage(args, fake_ray):
    env, log, _ = fake_ray
    r = _run_local(*args, env_extra=env)
    assert r.returncode != 0
    assert "Usage" in r.stderr or "--help" in r.stderr
    assert not log.exists(), "ray must not be called on bad usage"


def test_local_sh_start_stop_status(fake_ray):
    env, log, bindir = fake_ray
    r = _run_local(
        "start", "--num-cpus", "2", "--num-gpus", "0", "--port", "6390", "--dashboard-port", "8399",
        "--workers", "2", "--worker-cpus", "1", env_extra=env,
    )
    assert r.returncode == 0, r.stderr
    assert "RAY_ADDRESS=http://127.0.0.1:8399" in r.stdout
    assert "127.0.0.1:6390" in r.stdout
    calls = log.read_text().splitlines()
    assert len(calls) == 3, calls
    head, w1, w2 = calls
    assert head.startswith("start --head ")
    for expected in ("--port 6390", "--include-dashboard=true", "--dashboard-host 127.0.0.1",
                     "--dashboard-port 8399", "--num-cpus 2", "--num-gpus 0"):
        assert expected in head, expected
    for w in (w1, w2):
        assert w.startswith("start --address 127.0.0.1:6390 ")
        assert "--num-cpus 1" in w and "--num-gpus 0" in w and "--head" not in w
    # every node gets its own dashboard-agent port (job submission needs the head's)
    agent_ports = [int(re.search(r"--dashboard-agent-listen-port (\d+)", c).group(1)) for c in calls]
    assert len(set(agent_ports)) == 3 and agent_ports == sorted(agent_ports)
    # the ray's folder is first on PATH, so job entrypoints' `python` is its venv's;
    # no token anywhere -> auth explicitly disabled
    assert all(c.endswith(f"PATH0={bindir} AUTH=disabled") for c in calls)
    assert "RAY_AUTH_MODE=token" not in r.stdout

    log.unlink()
    assert _run_local("stop", env_extra=env).returncode == 0
    assert _run_local("status", "--port", "6390", env_extra=env).returncode == 0
    assert [c.split(" | ")[0] for c in log.read_text().splitlines()] == ["stop", "status --address 127.0.0.1:6390"]


def test_local_sh_token_auth(fake_ray):
    env, log, _ = fake_ray
    token_dir = Path(env["HOME"]) / ".ray"
    token_dir.mkdir()
    (token_dir / "auth_token").write_text("x" * 32)
    r = _run_local("start", "--agent-port", "40111", env_extra=env)
    assert r.returncode == 0, r.stderr
    (gen, head) = log.read_text().splitlines()
    assert gen.startswith("get-auth-token --generate ") and gen.endswith("AUTH=token")
    assert head.startswith("start --head ") and head.endswith("AUTH=token")
    assert "--dashboard-agent-listen-port 40111" in head
    assert "RAY_AUTH_MODE=token" in r.stdout  # clients are told to set it
    log.unlink()
    assert _run_local("status", env_extra=env).returncode == 0
    assert log.read_text().strip().endswith("AUTH=token")
    log.unlink()
    r = _run_local("start", "--auth", "disabled", env_extra=env)
    assert r.returncode == 0 and log.read_text().strip().endswith("AUTH=disabled")
    assert _run_local("start", "--auth", "maybe", env_extra=env).returncode != 0
