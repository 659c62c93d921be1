"""Shared benchmark helpers: peak-memory sampler, timer, results printer, a benchmark model directory.

Benchmarks on a shared, busy host are noisy: every script measures its baseline in the same run and prints ratios;
absolute times are printed for context only and are never asserted.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

DEFAULT_IMAGES = str((REPO / ".." / "shared" / "data" / "ham10000" / "images").resolve())
DEFAULT_WEIGHTS = str(
    (REPO / ".." / "shared" / "weights" / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5").resolve()
)
DEFAULT_WORKDIR = os.environ.get("SKINRAY_BENCH_DIR", "/tmp/skinray-bench")
MB = 1024.0 * 1024.0

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _psutil() -> Any:
    """psutil; Ray vendors a copy in ``ray/thirdparty_files`` that ``import ray`` puts on ``sys.path``."""
    try:
        import psutil
    except ImportError:
        import psutil
        import ray  # noqa: F401  (adds ray/thirdparty_files to sys.path)
    return psutil


# ---------------------------------------------------------------------------------------------------------------
# Timing and memory
# ---------------------------------------------------------------------------------------------------------------


class Timer:
    """``with Timer() as t: ...`` then ``t.seconds`` (wall clock, ``time.perf_counter``)."""

    def __enter__(self) -> "Timer":
        self.start = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc: Any) -> None:
        self.seconds = time.perf_counter() - self.start


def _ray_roots(psutil: Any) -> list[Any]:
    """Processes of *this* process's Ray instance (raylet, GCS, agents): their cmdline names our session dir.

    Workers are the raylet's children. Other Ray instances on the host have other session dirs and are ignored.
    """
    try:
        import ray
        import ray._private.worker as w

        if not ray.is_initialized() or w._global_node is None:
            return []
        session = os.path.basename(w._global_node.get_session_dir_path())
    except Exception:
        return []
    roots = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            if any(session in part for part in (p.info["cmdline"] or [])):
                roots.append(p)
        except Exception:
            continue
    return roots


class PeakMemory:
    """Background thread: every ``interval`` s, sum the RSS of this process, all its descendants and every
    process of this process's Ray instance (raylet, GCS and all Ray workers with their children).

    Summed RSS counts shared pages (shared libraries, the object store's shared memory) once per process that
    touches them, so it overstates physical use; it is a stable yardstick for comparing runs in the same process.

    It also adds up the CPU time (user + system) those processes used while it ran (``cpu_seconds``): unlike wall
    time, CPU time per image hardly moves when other jobs compete for the cores. Processes that start during the
    run count from zero; the last < ``interval`` s of a process that exits between samples is missed.
    """

    def __init__(self, interval: float = 0.2) -> None:
        self.interval = interval
        self.psutil = _psutil()
        self.me = self.psutil.Process()
        self.peak_mb = 0.0
        self.start_mb = 0.0
        self.peak_processes = 0
        self.peak_driver_mb = 0.0
        self.samples = 0
        self.cpu_seconds = 0.0
        self._cpu_first: dict[tuple[int, float], float] = {}
        self._cpu_last: dict[tuple[int, float], float] = {}
        self._initial: set[tuple[int, float]] = set()
        self._names: dict[tuple[int, float], str] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._roots: list[Any] = []
        self._roots_at = 0.0

    def _processes(self) -> dict[int, Any]:
        now = time.monotonic()
        if now - self._roots_at > 2.0:  # refreshing the Ray roots scans the process table: not every sample
            self._roots, self._roots_at = _ray_roots(self.psutil), now
        procs: dict[int, Any] = {}
        for root in [self.me, *self._roots]:
            try:
                procs[root.pid] = root
                for c in root.children(recursive=True):
                    procs[c.pid] = c
            except self.psutil.Error:
                continue
        return procs

    def sample(self, initial: bool = False) -> tuple[float, int]:
        total = 0
        procs = self._processes()
        for p in procs.values():
            try:
                with p.oneshot():
                    rss = p.memory_info().rss
                    t = p.cpu_times()
                    key = (p.pid, p.create_time())
                    name = self._name(p)
                    if key not in self._names or name != "ray::IDLE":  # keep what an idle worker became
                        self._names[key] = name
            except self.psutil.Error:
                continue
            total += rss
            if p.pid == self.me.pid:
                self.peak_driver_mb = max(self.peak_driver_mb, rss / MB)
            cpu = t.user + t.system
            if initial:
                self._initial.add(key)
            if key not in self._cpu_first:
                self._cpu_first[key] = cpu if key in self._initial else 0.0
            self._cpu_last[key] = cpu
        return total / MB, len(procs)

    def _name(self, p: Any) -> str:
        if p.pid == self.me.pid:
            return "driver (this process)"
        try:
            cmd = p.cmdline()
        except self.psutil.Error:
            cmd = []
        first = cmd[0] if cmd else p.name()
        if first.startswith("ray::"):
            return first.split(" ")[0]
        script = next((os.path.basename(c) for c in cmd[1:] if c.endswith(".py")), None)
        return script or os.path.basename(first)

    def cpu_by_process(self) -> dict[str, float]:
        """CPU seconds used during the run, by process name (Ray workers by their task/actor title)."""
        out: dict[str, float] = {}
        for k in self._cpu_last:
            name = self._names.get(k, "?")
            out[name] = out.get(name, 0.0) + self._cpu_last[k] - self._cpu_first[k]
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))

    def _run(self) -> None:
        while not self._stop.is_set():
            mb, n = self.sample()
            self.samples += 1
            if mb > self.peak_mb:
                self.peak_mb, self.peak_processes = mb, n
            self._stop.wait(self.interval)

    def __enter__(self) -> "PeakMemory":
        self.start_mb, _ = self.sample(initial=True)
        self.peak_mb = self.start_mb
        self._thread = threading.Thread(target=self._run, name="peak-memory", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.sample()
        self.cpu_seconds = sum(self._cpu_last[k] - self._cpu_first[k] for k in self._cpu_last)


# ---------------------------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------------------------


def _cell(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        if v != v:
            return "nan"
        if abs(v) >= 100:
            return f"{v:,.0f}"
        if abs(v) >= 10:
            return f"{v:.1f}"
        return f"{v:.2f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    if not rows:
        return "(no rows)"
    cols = list(columns or dict.fromkeys(k for r in rows for k in r))
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(_cell(r.get(c)) for c in cols) + " |")
    return "\n".join(lines)


def print_results(title: str, tables: dict[str, Sequence[dict[str, Any]]], payload: dict[str, Any]) -> None:
    """Each table as markdown under a heading, then one ``RESULT_JSON {...}`` line with everything."""
    host = {"cpus": os.cpu_count(), "loadavg_1_5_15_at_end": [round(x, 2) for x in os.getloadavg()]}
    print(f"\n## {title}\n", flush=True)
    print(f"host: {host['cpus']} CPUs, load average at end {host['loadavg_1_5_15_at_end']}\n")
    for name, rows in tables.items():
        if name:
            print(f"### {name}\n")
        print(markdown_table(rows))
        print()
    print("RESULT_JSON " + json.dumps({"benchmark": title, "host": host, **payload}, default=str, sort_keys=False), flush=True)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or not b:
        return None
    return round(a / b, 3)


def verdict(value: float | None, target: float, higher_is_better: bool = True) -> str:
    if value is None:
        return "n/a"
    ok = value >= target if higher_is_better else value <= target
    return "meets" if ok else "misses"


# ---------------------------------------------------------------------------------------------------------------
# Processes and inputs
# ---------------------------------------------------------------------------------------------------------------


def in_subprocess(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run ``fn`` in a fresh spawned interpreter (keeps TensorFlow and big arrays out of the driver's memory)."""
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        return pool.submit(fn, *args, **kwargs).result()


def list_images(images_dir: str, n: int | None = None) -> list[str]:
    """Sorted absolute paths of the JPEG/PNG files in ``images_dir``; with ``n``, cycled to exactly ``n``."""
    root = Path(images_dir).resolve()
    files = sorted(str(p) for p in root.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not files:
        raise SystemExit(f"no images in {images_dir}")
    if n is None:
        return files
    return [files[i % len(files)] for i in range(n)]


def cycle(items: Iterable[Any], n: int) -> list[Any]:
    items = list(items)
    return [items[i % len(items)] for i in range(n)]


# ---------------------------------------------------------------------------------------------------------------
# A model directory for benchmarks
# ---------------------------------------------------------------------------------------------------------------


def make_model_dir(path: str, weights: str, sample_images: Sequence[str] = ()) -> dict[str, Any]:
    """An untrained but complete model directory: MobileNetV2 with real ImageNet weights and a random head.

    Written through ``skinray.model.artifact`` like a trained model (``model.keras``, ``model.onnx`` with its parity
    measured on random inputs and ``sample_images``, a verified ``skinray.json``). Speed and memory are what a
    trained model of the same architecture has; the probabilities mean nothing. Imports TensorFlow: call it via
    :func:`in_subprocess` from a driver whose memory is being measured.
    """
    import tempfile

    import numpy as np

    from skinray.config import ImageConfig
    from skinray.data import images
    from skinray.decision.calibration import Calibration
    from skinray.decision.operating_point import ThresholdChoice
    from skinray.model import artifact, network as skmodel

    cfg = ImageConfig()
    m = skmodel.build_model(cfg.size, 1.0, weights)
    samples = None
    if sample_images:
        samples = np.stack([images.decode(Path(p).read_bytes(), cfg) for p in sample_images]).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        m.save(os.path.join(tmp, artifact.MODEL_FILE))
        names, diff = skmodel.export_onnx(m, os.path.join(tmp, artifact.ONNX_FILE), cfg.size, samples=samples)
        meta = artifact.ModelMeta(
            created_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), architecture={"base": "MobileNetV2"},
            weights_source=str(weights), preprocessing=artifact.Preprocessing.from_config(cfg),
            outputs=artifact.Outputs(logit=names[skmodel.LOGIT]), calibration=Calibration(),
            threshold=ThresholdChoice(threshold=0.5, policy="fixed"), onnx={"parity_max_abs_diff": diff},
            training={"bench": {"untrained": True, "weights": str(weights)}})
        artifact.write(tmp, path, meta)
    return {"parity": diff, "weights": str(weights)}


def resolve_model(model: str | None, weights: str, workdir: str, sample_images: Sequence[str] = ()) -> str:
    """``--model DIR`` as given, else a cached benchmark model under ``workdir`` (built once per weights file)."""
    if model:
        if not os.path.exists(os.path.join(model, "skinray.json")):
            raise SystemExit(f"--model {model}: no skinray.json there")
        return os.path.abspath(model)
    path = os.path.join(workdir, "model-untrained-v2")
    meta_path = os.path.join(path, "skinray.json")
    if os.path.exists(meta_path):
        with open(meta_path) as f:
            meta = json.load(f)
        if meta.get("training", {}).get("bench", {}).get("weights") == str(weights):
            log(f"reusing benchmark model {path} (ONNX parity {meta['onnx']['parity_max_abs_diff']:.1e})")
            return path
    if not os.path.isfile(weights):
        raise SystemExit(f"weights file not found: {weights} (pass --weights PATH or --model DIR)")
    log(f"building an untrained benchmark model in {path} from {weights}")
    made = in_subprocess(make_model_dir, path, weights, list(sample_images))
    log(f"model ready (ONNX parity {made['parity']:.1e})")
    return path


def start_ray(attempts: int = 3) -> Any:
    """``skinray.runtime.ensure_ray()`` (a fresh local instance), retried: on a saturated host the node can miss
    Ray's start-up deadline. Progress bars off to keep the output short."""
    from skinray.runtime import ensure_ray

    for attempt in range(1, attempts + 1):
        try:
            ray = ensure_ray()
            break
        except Exception as exc:  # "The current node timed out during startup"
            if attempt == attempts:
                raise
            log(f"Ray start failed ({str(exc).splitlines()[0][:120]}); retrying")
            try:
                import ray as _ray

                _ray.shutdown()
            except Exception:
                pass
            time.sleep(10)
    ray.data.DataContext.get_current().enable_progress_bars = False
    log(f"Ray started; host load average (1/5/15 min) {[round(x, 2) for x in os.getloadavg()]} on {os.cpu_count()} CPUs")
    return ray
