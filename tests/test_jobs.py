"""`ray job submit` against a real local head node started by cluster/local.sh."""

import json
import os
import subprocess
import sys
import time
import uuid

import pytest

from skinray.query import scores_dataset

from conftest import REPO, free_port

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def head_node(tmp_path_factory):
    temp_dir = f"/tmp/skinray-head-{uuid.uuid4().hex[:8]}"  # short: Ray's socket paths have a length limit
    port, dash = free_port(), free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_BIN": str(REPO / ".venv" / "bin" / "ray")
           if (REPO / ".venv" / "bin" / "ray").exists() else os.path.join(os.path.dirname(sys.executable), "ray")}
    env.pop("RAY_ADDRESS", None)
    start = subprocess.run(
        ["bash", str(REPO / "cluster" / "local.sh"), "start", "--num-cpus", "2", "--port", str(port),
         "--dashboard-port", str(dash), "--auth", "disabled", "--", "--temp-dir", temp_dir],
        capture_output=True, text=True, env=env, timeout=180)
    assert start.returncode == 0, start.stdout + start.stderr
    yield f"http://127.0.0.1:{dash}", env
    # Stop only this head (not `ray stop`, which would end every Ray on the machine, the test session's too).
    subprocess.run(["pkill", "-f", temp_dir], check=False)
    time.sleep(1)
    subprocess.run(["pkill", "-9", "-f", temp_dir], check=False)


def test_score_job_submitted_to_head_node_succeeds(head_node, sample, model_dir, tmp_path):
    from ray.job_submission import JobStatus, JobSubmissionClient

    address, env = head_node
    os.environ["RAY_AUTH_MODE"] = "disabled"
    client = JobSubmissionClient(address)
    out = tmp_path / "scores"
    # the nightly layout: {input-root}/{date}/ holds that day's images
    day = tmp_path / "incoming" / "2026-11-25"
    day.mkdir(parents=True)
    for name in sorted(os.listdir(f"{sample['local']}/images"))[:12]:
        os.link(f"{sample['local']}/images/{name}", day / name)
    entrypoint = (f"{sys.executable} jobs/score.py --model {model_dir} --input-root {tmp_path / 'incoming'} "
                  f"--date 2026-11-25 --out {out} --set score.max_failure_fraction=0.5 --log-format json")
    job_id = client.submit_job(entrypoint=entrypoint, runtime_env={"working_dir": str(REPO),
                                                                   "excludes": [".venv", ".git", "demo-out"]})
    deadline = time.time() + 420
    status = client.get_job_status(job_id)
    while status not in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED} and time.time() < deadline:
        time.sleep(2)
        status = client.get_job_status(job_id)
    logs = client.get_job_logs(job_id)
    assert status == JobStatus.SUCCEEDED, logs[-3000:]
    events = [json.loads(line) for line in logs.splitlines() if line.startswith("{")]
    # skinray's lines are JSON objects; the stage's event and the command's result carry the counts as fields
    assert "[skinray]" not in logs and "skinray: error" not in logs, logs[-2000:]
    done = [e for e in events if e.get("logger") == "skinray.score" and e.get("status") == "succeeded"]
    result = [e for e in events if e.get("logger") == "skinray.cli" and "run_id" in e]
    assert len(done) == 1 and done[0]["rows"] == 12 and done[0]["table_version"] == 1, logs[-2000:]
    assert len(result) == 1 and result[0]["run_id"] == done[0]["run_id"] and result[0]["scored"] <= 12
    df = scores_dataset(str(out)).to_table().to_pandas()
    assert len(df) == 12 and str(df["scored_date"].iloc[0]) == "2026-11-25"
    # planted corrupt files among the 12 are rows with an error, not a failed job
    corrupt = {f"{i}.jpg" for i in sample["summary"]["corrupt_ids"]}
    assert set(df[df.error.notna()].image_uri.str.rsplit("/", n=1).str[-1]) == corrupt & set(os.listdir(day))
    # Ray Jobs do not retry: re-submitting the same night is safe and writes nothing twice.
    again = client.submit_job(entrypoint=entrypoint, runtime_env={"working_dir": str(REPO),
                                                                  "excludes": [".venv", ".git", "demo-out"]})
    while client.get_job_status(again) not in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}:
        time.sleep(2)
    assert client.get_job_status(again) == JobStatus.SUCCEEDED
    assert "nothing new" in client.get_job_logs(again)  # and no second commit
    assert len(scores_dataset(str(out)).to_table()) == 12
