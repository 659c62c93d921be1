"""Shared fixtures: a real S3 endpoint (moto server on 127.0.0.1), one local Ray per session, sample data, a model.

The S3 variables are set before Ray starts so that Ray's worker processes inherit them, exactly as on a cluster
whose nodes carry AWS settings in their environment.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
HAM10000 = REPO.parent / "shared" / "data" / "ham10000"
BUCKET = "skinray-test"


# run.json's keys as scoring wrote them before the record had a schema (format 0): a succeeded night, and what a
# failed one has instead; the schema keeps every one and adds format_version and image_root
RUN_JSON_KEYS_V0 = {
    "run_id", "scored_date", "status", "input", "input_kind", "input_fingerprint", "skipped_inputs", "nulled_values",
    "model", "model_id", "engine", "tta", "tta_band", "threshold", "threshold_policy", "calibration", "diagnoses",
    "started_at", "table", "config", "versions", "scored_this_attempt", "resumed_rows", "quarantined_parts", "actors",
    "rows_by_node", "batch_modes", "views", "startup_seconds", "images_per_second_steady", "actors_ready_seconds",
    "images_per_second_overall", "rows", "scored", "failed", "failed_by_reason", "retry_later",
    "out_of_distribution", "flagged", "mean_prob", "drift", "commit_seconds", "submissions", "table_version",
    "finished_at", "wall_seconds", "pngs", "metrics", "worklist", "saliency_seconds_per_image"}
FAILED_RUN_JSON_KEYS_V0 = (RUN_JSON_KEYS_V0 - {"commit_seconds", "submissions", "table_version", "wall_seconds"}
                           | {"failure_reason"})
RUN_JSON_ADDED = {"format_version", "image_root"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory) -> str:
    """A moto S3 server process; the AWS variables point the default credential chain and endpoint at it."""
    moto = shutil.which("moto_server") or str(Path(sys.executable).parent / "moto_server")
    port = free_port()
    log = open(tmp_path_factory.mktemp("moto") / "moto.log", "w")  # the server's request log, for debugging
    proc = subprocess.Popen([moto, "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail("moto_server did not start")
    os.environ.update({
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": endpoint,
    })
    from skinray.io.storage import boto3_client

    boto3_client().create_bucket(Bucket=BUCKET)
    yield endpoint
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(scope="session")
def ray_session(s3_endpoint):
    """One local Ray for the whole session (started after the S3 variables exist)."""
    from skinray.runtime import ensure_ray

    ray = ensure_ray(num_cpus=2)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def sample(tmp_path_factory, s3_endpoint) -> dict:
    """Synthetic data with planted faults, locally and (the same files) on S3."""
    from skinray.data.synth import generate
    from skinray.io import storage

    root = tmp_path_factory.mktemp("sample")
    summary = generate(str(root), 96, image_size=64, schema="isic", malignant_fraction=0.3, seed=3, corrupt=4,
                       missing=3)
    s3_root = f"s3://{BUCKET}/sample"
    storage.upload_dir(str(root), s3_root)
    return {"local": str(root), "s3": s3_root, "summary": summary}


def tiny_train_overrides(prepared: str, out: str) -> dict:
    return {
        "train.prepared": prepared, "train.out": out, "train.workers": 2, "train.epochs": 2,
        "train.batch_size": 8, "train.weights": "none", "train.alpha": 0.35, "image.size": 32,
        "train.fine_tune_epochs": 0, "train.tta": False,
        # a 7-image validation split cannot promise any sensitivity; Youden keeps both classes in the outputs
        "train.threshold_policy": "youden",
        # nor show any network above chance with 95% confidence (a 2-epoch 32-pixel one from scratch is not): these
        # models test the pipeline, not learning; constant or non-finite outputs would still stop them
        "train.above_chance_confidence": 0,
    }


@pytest.fixture(scope="session")
def prepared(sample, ray_session, tmp_path_factory) -> str:
    from skinray.config import load_config
    from skinray.data.prepare import prepare

    out = str(tmp_path_factory.mktemp("prepared"))
    cfg = load_config(overrides={"prepare.manifest": f"{sample['local']}/metadata.csv",
                                 "prepare.images": f"{sample['local']}/images", "prepare.out": out})
    prepare(cfg)
    return out


@pytest.fixture(scope="session")
def model_dir(prepared, tmp_path_factory) -> str:
    """A small model trained by the real 2-worker Ray Train path (weights none, 32 px, alpha 0.35)."""
    from skinray.config import load_config
    from skinray.train.driver import train

    out = str(tmp_path_factory.mktemp("model"))
    # flip TTA on: calibration and threshold come from flip-averaged validation scores, and scoring follows it
    train(load_config(overrides={**tiny_train_overrides(prepared, out), "train.tta": True}))  # as the default
    return out


def run_cli(*args: str, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """The installed command line in a fresh process (as a user or a Ray job would run it)."""
    return subprocess.run([sys.executable, "-m", "skinray", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})}, cwd=REPO)


def noisy_scores(n: int = 500, seed: int = 0, shift: float = 0.2):
    """Labels and overlapping probabilities: a classifier that is better than chance, not perfect."""
    import numpy as np

    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    p = np.clip(rng.normal(0.4 + shift * y, 0.2), 0.0, 1.0)
    return y, p


def assert_png(path: str) -> None:
    from PIL import Image

    with Image.open(path) as im:
        assert im.format == "PNG"
        assert im.width > 100 and im.height > 100


@pytest.fixture(scope="session")
def labelled_set(tmp_path_factory) -> dict:
    """A clinic's own labelled images: another synthetic set (other seed, more malignant), ids of its own."""
    import pandas as pd

    from skinray.data.synth import generate

    root = tmp_path_factory.mktemp("clinic")
    generate(str(root), 160, image_size=64, schema="isic", malignant_fraction=0.45, seed=11)
    meta = pd.read_csv(root / "metadata.csv")
    small = meta[meta["benign_malignant"] == "malignant"].head(4)
    small = pd.concat([small, meta[meta["benign_malignant"] == "benign"].head(8)])
    small.to_csv(root / "small.csv", index=False)
    return {"manifest": str(root / "metadata.csv"), "small": str(root / "small.csv"), "images": str(root / "images"),
            "n": len(meta), "malignant": int((meta["benign_malignant"] == "malignant").sum())}


@pytest.fixture(scope="session")
def promising_model(model_dir, tmp_path_factory) -> str:
    """The session model with the default's kind of promises: sensitivity 0.8 at 90% confidence, a melanoma floor,
    and a validation ROC-AUC bound of 0.99 that a small synthetic network cannot keep on other images."""
    import os
    import shutil
    import tempfile

    from skinray.decision.operating_point import DiagnosisSensitivity
    from skinray.model import artifact

    art = artifact.ModelArtifact.open(model_dir)
    thr = art.meta.threshold.model_copy(update={
        "policy": "sensitivity", "target_sensitivity": 0.8, "confidence": 0.9,
        "diagnoses": {"mel": DiagnosisSensitivity(target=0.7, n=10, met=True)}})
    validation = {**(art.meta.validation or {}), "roc_auc_ci95": [0.99, 1.0]}
    out = str(tmp_path_factory.mktemp("promising"))
    with tempfile.TemporaryDirectory() as tmp:
        for name in art.meta.files:
            shutil.copyfile(os.path.join(art.local_dir, name), os.path.join(tmp, name))
        artifact.write(tmp, out, art.meta.model_copy(update={"threshold": thr, "validation": validation}))
    return out


def second_source(tmp_path, n=80, seed=5):
    """A HAM10000-schema source with ids of its own (synth ids start again at 0) and no lesion ids."""
    import pandas as pd

    from skinray.data.synth import generate

    generate(str(tmp_path / "b"), n, image_size=48, schema="ham10000", seed=seed, malignant_fraction=0.4)
    meta = pd.read_csv(tmp_path / "b" / "metadata.csv")
    for old in meta["image_id"]:
        os.rename(tmp_path / "b" / "images" / f"{old}.jpg", tmp_path / "b" / "images" / f"B{old}.jpg")
    meta["image_id"] = "B" + meta["image_id"]
    meta["lesion_id"] = None
    meta.to_csv(tmp_path / "b" / "metadata.csv", index=False)
    return meta


def garbage_graph_model(model_dir, dest) -> str:
    """A copy of ``model_dir`` whose model.onnx is garbage with its hash re-recorded: it passes verification."""
    import json

    from skinray.io import storage

    shutil.copytree(model_dir, dest, ignore=shutil.ignore_patterns("_ray"))
    (dest / "model.onnx").write_bytes(b"this is not an ONNX graph\n" * 40)
    meta = json.loads((dest / "skinray.json").read_text())
    meta["files"]["model.onnx"] = storage.sha256_file(str(dest / "model.onnx"))
    (dest / "skinray.json").write_text(json.dumps(meta))
    return str(dest)


class FlakyS3:
    """An HTTP proxy in front of the S3 endpoint that answers ``503 SlowDown`` to GETs of chosen keys: the first
    ``times`` of each (``times=None``: every one), as a throttled or briefly unreachable bucket does. Everything else
    passes through unchanged; ``failures`` counts what was refused. It serves from its own process: a library call
    that holds the GIL while it waits for S3 (deltalake's) would otherwise wait for a proxy that cannot run."""

    def __init__(self, upstream: str, keys: set[str], times: int | None) -> None:
        import multiprocessing

        self.upstream, self.keys, self.times = upstream, set(keys), times
        ctx = multiprocessing.get_context("fork")
        self._failures = ctx.Value("i", 0)
        self._port = ctx.Value("i", 0)
        self._ready = ctx.Event()
        self._process = ctx.Process(target=self._serve, daemon=True)

    @property
    def failures(self) -> int:
        return self._failures.value

    def _serve(self) -> None:
        import http.client
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        from urllib.parse import urlparse

        seen: dict[str, int] = {}
        lock = threading.Lock()
        host = urlparse(self.upstream)
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _body(self) -> bytes:
                if "chunked" not in self.headers.get("Transfer-Encoding", "").lower():
                    return self.rfile.read(int(self.headers.get("Content-Length") or 0))
                data = b""
                while True:  # a streamed upload (delta-rs sends its commits so)
                    size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                    if not size:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass  # trailers
                        return data
                    data += self.rfile.read(size)
                    self.rfile.readline()

            def _forward(self) -> None:
                body = self._body()
                key = self.path.split("?")[0].lstrip("/")
                if self.command == "GET" and "?" not in self.path and any(key.endswith(k) for k in proxy.keys):
                    with lock:
                        seen[key] = seen.get(key, 0) + 1
                        fail = proxy.times is None or seen[key] <= proxy.times
                        if fail:
                            with proxy._failures.get_lock():
                                proxy._failures.value += 1
                    if fail:
                        err = (b"<?xml version='1.0'?><Error><Code>SlowDown</Code><Message>Please reduce your "
                               b"request rate.</Message></Error>")
                        self.send_response(503)
                        self.send_header("Content-Type", "application/xml")
                        self.send_header("Content-Length", str(len(err)))
                        self.end_headers()
                        self.wfile.write(err)
                        return
                conn = http.client.HTTPConnection(host.hostname, host.port, timeout=30)
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() not in ("connection", "transfer-encoding", "content-length", "expect")}
                if body or self.command in ("PUT", "POST"):
                    headers["Content-Length"] = str(len(body))
                conn.request(self.command, self.path, body=body or None, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length", "server", "date"):
                        self.send_header(k, v)
                # a HEAD answer has no body but says the object's size
                size = resp.getheader("Content-Length", "0") if self.command == "HEAD" else str(len(data))
                self.send_header("Content-Length", size)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _forward

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._port.value = server.server_address[1]
        self._ready.set()
        server.serve_forever()

    def __enter__(self) -> "FlakyS3":
        self._process.start()
        self._ready.wait(30)
        self.url = f"http://127.0.0.1:{self._port.value}"
        return self

    def __exit__(self, *exc) -> None:
        self._process.terminate()
        self._process.join(10)


def score_rows(run_id: str, n: int = 5, seed: int = 0):
    """``n`` rows in the scores table's schema for one night (the last one a failed image), seeded."""
    import json

    import numpy as np
    import pandas as pd

    from skinray.scoring import row_schema

    rng = np.random.default_rng(seed)
    logit = rng.normal(0, 3, n)
    prob = 1 / (1 + np.exp(-logit))
    df = pd.DataFrame({
        "run_id": run_id, "input_row": np.arange(n), "isic_id": [f"ISIC_{i}" for i in range(n)],
        "image_uri": [f"/in/{i}.jpg" for i in range(n)], "prob_malignant": prob, "logit_malignant": logit,
        "predicted": np.where(prob >= 0.4, "malignant", "benign"), "confidence": np.maximum(prob, 1 - prob),
        "threshold": 0.4, "dx_pred": "nv", "dx_probs": json.dumps({"mel": 0.2, "nv": 0.8}), "model_id": "m" * 16,
        "scored_at": pd.Timestamp("2026-11-25T03:00:00Z"), "error": None, "label": None,
        "image_key": [f"/in/{i}.jpg" for i in range(n)], "image_stamp": "1:1"})
    df.loc[n - 1, ["prob_malignant", "logit_malignant", "predicted", "confidence", "dx_pred", "dx_probs"]] = None
    df.loc[n - 1, "error"] = "missing: /in/4.jpg"
    return row_schema.to_rows(df)
