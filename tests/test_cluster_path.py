"""The cluster path, run for real: a Ray head and a second node started by cluster/local.sh, every job submitted
with `ray job submit`, S3 (the moto endpoint) the only storage the jobs use, and GPU-shaped scheduling with a
logical GPU node that joins while a job waits.

The nodes start without any AWS settings: the jobs get them through their runtime_env, as on a real cluster.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid

import numpy as np
import pytest

from skinray.config import load_config
from skinray.io import storage
from skinray.model.artifact import ModelArtifact
from skinray.query import scores_dataset
from skinray.scoring.run import score

from conftest import BUCKET, REPO, free_port

pytestmark = pytest.mark.slow
DATE = "2026-11-25"
EXCLUDES = [".venv", ".git", "demo-out", "__pycache__", ".pytest_cache"]
RAY = str(REPO / ".venv" / "bin" / "ray") if (REPO / ".venv" / "bin" / "ray").exists() else \
    os.path.join(os.path.dirname(sys.executable), "ray")


def _node_env(state: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_") and k != "RAY_ADDRESS"}
    env.update(RAY_AUTH_MODE="disabled", RAY_BIN=RAY, SKINRAY_LOCAL_STATE=state)
    return env


@pytest.fixture(scope="module")
def cluster(s3_endpoint, tmp_path_factory):
    """Head (1 CPU) + one worker node (1 CPU) on this machine; stopped by PID afterwards."""
    state = str(tmp_path_factory.mktemp("local-state"))
    port, dash = free_port(), free_port()
    temp_dir = f"/tmp/skr-{uuid.uuid4().hex[:6]}"  # Ray's socket paths have a length limit
    env = _node_env(state)
    start = subprocess.run(["bash", str(REPO / "cluster" / "local.sh"), "start", "--num-cpus", "1", "--workers", "1",
                            "--worker-cpus", "1", "--port", str(port), "--dashboard-port", str(dash), "--auth",
                            "disabled", "--", "--temp-dir", temp_dir], capture_output=True, text=True, env=env,
                           timeout=900)
    assert start.returncode == 0, start.stdout + start.stderr
    from ray.job_submission import JobSubmissionClient

    os.environ["RAY_AUTH_MODE"] = "disabled"
    info = {"port": port, "dash": f"http://127.0.0.1:{dash}", "env": env, "state": state,
            "client": JobSubmissionClient(f"http://127.0.0.1:{dash}"),
            "s3_env": {k: v for k, v in os.environ.items() if k.startswith("AWS_")}}
    yield info
    stop = subprocess.run(["bash", str(REPO / "cluster" / "local.sh"), "stop", "--port", str(port)],
                          capture_output=True, text=True, env=env, timeout=180)
    assert stop.returncode == 0, stop.stdout + stop.stderr


def _nodes(cluster) -> list[dict]:
    from ray.util.state import list_nodes

    return [n for n in list_nodes(address=cluster["dash"], detail=True) if n.state == "ALIVE"]


def _run_job(cluster, entrypoint: str, timeout: int = 600) -> tuple[str, str]:
    from ray.job_submission import JobStatus

    client = cluster["client"]
    agent_deadline = time.time() + 120
    while True:  # a head node just started may not have its job agent up yet; Ray says to try again later
        try:
            job = client.submit_job(entrypoint=entrypoint, runtime_env={
                "working_dir": str(REPO), "excludes": EXCLUDES, "env_vars": cluster["s3_env"]})
            break
        except RuntimeError as exc:
            if "No available agent" not in str(exc) or time.time() > agent_deadline:
                raise
            time.sleep(3)
    deadline = time.time() + timeout
    status = client.get_job_status(job)
    while status not in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED} and time.time() < deadline:
        time.sleep(2)
        status = client.get_job_status(job)
    if status not in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}:
        client.stop_job(job)
    return str(status), client.get_job_logs(job)


def _s3_keys(prefix: str) -> list[str]:
    paginator = storage.boto3_client().get_paginator("list_objects_v2")
    return [o["Key"] for page in paginator.paginate(Bucket=BUCKET, Prefix=prefix) for o in page.get("Contents", [])]


def test_the_pipeline_runs_across_two_nodes_on_s3_only(cluster, sample, ray_session, tmp_path):
    nodes = {n.node_id for n in _nodes(cluster)}
    assert len(nodes) == 2
    base = f"s3://{BUCKET}/cluster-{uuid.uuid4().hex[:6]}"
    day = f"{base}/incoming/{DATE}"
    for name in sorted(os.listdir(f"{sample['local']}/images"))[:16]:
        storage.write_bytes(f"{day}/{name}", open(f"{sample['local']}/images/{name}", "rb").read())
    steps = [
        f"python jobs/prepare.py --manifest {sample['s3']}/metadata.csv --images {sample['s3']}/images "
        f"--out {base}/prepared",
        f"python jobs/train.py --prepared {base}/prepared --out {base}/model --workers 2 --weights none "
        f"--image-size 32 --head-epochs 2 --fine-tune-epochs 0 --batch-size 8 --set train.alpha=0.35 "
        f"--set train.threshold_policy=youden --set train.tta=false --set train.above_chance_confidence=0",
        f"python jobs/evaluate.py --model {base}/model --prepared {base}/prepared --out {base}/report",
        f"python jobs/score.py --model {base}/model --input-root {base}/incoming --date {DATE} --out {base}/scores "
        f"--actors 2 --batch-size 2 --set score.max_failure_fraction=0.5",
        f"python -m skinray query {base}/scores --daily-counts --format json",
    ]
    logs = {}
    for step in steps:
        status, logs[step.split()[1]] = _run_job(cluster, step)
        assert status == "SUCCEEDED", f"{step}\n{logs[step.split()[1]][-3000:]}"
    # Ray Train put one worker on each node, and the model directory and every checkpoint are on S3
    meta = ModelArtifact.open(f"{base}/model").meta
    assert {w["node_id"] for w in meta.training["workers"]} == nodes
    assert meta.training["storage_path"] == f"{base}/model/_ray"
    prefix = f"{base}/model/"[len(f"s3://{BUCKET}/"):]
    keys = _s3_keys(prefix)
    assert any("/checkpoint_" in k and k.endswith("last.weights.h5") for k in keys)
    assert {"model.keras", "model.onnx", "skinray.json"} <= {k.rsplit("/", 1)[-1] for k in keys}
    # the scoring actors ran on both nodes
    run_id = next(k for k in _s3_keys(f"{base}/scores/runs/"[len(f"s3://{BUCKET}/"):]) if k.endswith("run.json"))
    record = storage.read_json(f"s3://{BUCKET}/{run_id}")
    assert set(record["rows_by_node"]) == nodes and record["status"] == "succeeded"
    assert json.loads(logs["-m"].strip().splitlines()[-1])["images"] == 16
    # the same model on the same images in one local process gives the same scores
    local = str(tmp_path / "single")
    score(load_config(overrides={"score.model": f"{base}/model", "score.input": day, "score.out": local,
                                 "score.date": DATE, "score.max_failure_fraction": 0.5}))
    a = scores_dataset(f"{base}/scores").to_table().to_pandas().set_index("image_uri").sort_index()
    b = scores_dataset(local).to_table().to_pandas().set_index("image_uri").sort_index()
    assert list(a.index) == list(b.index)
    ok = a["error"].isna()
    assert (ok == b["error"].isna()).all()
    assert np.max(np.abs(a.loc[ok, "prob_malignant"] - b.loc[ok, "prob_malignant"])) < 1e-5


def test_gpu_scoring_waits_for_a_gpu_node_and_lands_there(cluster, sample, tmp_path):
    base = f"s3://{BUCKET}/gpu-{uuid.uuid4().hex[:6]}"
    model = next(k for k in _s3_keys("cluster-") if k.endswith("/model/skinray.json")).rsplit("/", 1)[0]
    day = f"{base}/incoming/{DATE}"
    for name in sorted(os.listdir(f"{sample['local']}/images"))[:4]:
        storage.write_bytes(f"{day}/{name}", open(f"{sample['local']}/images/{name}", "rb").read())
    args = f"--model s3://{BUCKET}/{model} --input {day} --out {base}/scores --date {DATE}"
    # no GPU node, and none joins: one clear line after the wait
    status, logs = _run_job(cluster, f"python jobs/score.py {args} --gpu --gpu-wait 5", timeout=300)
    assert status == "FAILED" and "no GPU joined the Ray cluster within 5 s" in logs, logs[-2000:]
    # a (logical) GPU node joins while the job waits: the scoring actor is placed on it, where the missing CUDA
    # provider is its own clear error
    from ray.job_submission import JobStatus

    client = cluster["client"]
    job = client.submit_job(entrypoint=f"python -m skinray score {args} --gpu --gpu-wait 300 --actors 1",
                            runtime_env={"working_dir": str(REPO), "excludes": EXCLUDES,
                                         "env_vars": cluster["s3_env"]})
    deadline = time.time() + 300
    while "waiting up to" not in client.get_job_logs(job) and time.time() < deadline:
        time.sleep(1)
    gpu_node = subprocess.Popen([RAY, "start", "--address", f"127.0.0.1:{cluster['port']}", "--num-gpus", "1",
                                 "--num-cpus", "1", "--block", "--disable-usage-stats",
                                 "--dashboard-agent-listen-port", str(free_port())],
                                env=cluster["env"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while client.get_job_status(job) not in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED} \
                and time.time() < deadline + 300:
            time.sleep(2)
        logs = client.get_job_logs(job)
        gpu_ids = [n.node_id for n in _nodes(cluster) if n.resources_total.get("GPU")]
        assert str(client.get_job_status(job)) == "FAILED" and len(gpu_ids) == 1, logs[-2000:]
        assert "CUDA provider" in logs and f"node {gpu_ids[0][:12]}" in logs, logs[-3000:]
        assert "Traceback" not in logs.split("skinray: error:")[-1]
        # with the preflight of the job entrypoint, the same problem ends the job before any scoring
        status, logs = _run_job(cluster, f"python jobs/score.py {args} --gpu --gpu-wait 60", timeout=300)
        assert status == "FAILED" and f"GPU node {gpu_ids[0][:12]}: ONNX Runtime has no CUDA provider" in logs, \
            logs[-2000:]
    finally:
        gpu_node.terminate()
        gpu_node.wait(timeout=60)
