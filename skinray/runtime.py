"""Ray is started in exactly one place: join the cluster named by ``RAY_ADDRESS``, else start a local one.

Also the cluster's resources as skinray sees them, waiting for GPUs an autoscaler has yet to add, and the quiet
environment every process gets (TensorFlow's C++ logs, absl, gRPC) unless ``-v`` asks for them.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import platform
import sys
import time
from contextlib import contextmanager
from importlib import metadata
from typing import Any, Iterator

from skinray import SkinrayError, TemporaryError

LOCAL_OBJECT_STORE_BYTES = 2 * 1024**3  # enough for streaming; a 2-core laptop keeps the rest for workers
# A local node on a loaded host can miss Ray's default agent-registration timeout (measured: 4 of 12 starts at
# load 13-18 failed with "node timed out during startup"; 300 s made every start succeed).
AGENT_REGISTER_TIMEOUT_MS = "300000"
LOCAL_START_TRIES = 2
GPU_POLL_SECONDS = 2.0
# Training, export, Grad-CAM and the tf engine need these; the base install scores with ONNX Runtime alone.
TRAIN_EXTRA_INSTALL = "pip install 'skinray[train]'"
TRAIN_EXTRA_NAMES = {"tensorflow": "TensorFlow", "keras": "Keras"}  # the others by their module name
EXPORT_MODULES = ("tensorflow", "keras", "tf2onnx", "onnx")  # Keras' ONNX export runs tf2onnx; quantizing, onnx
# The base install brings ONNX Runtime's CPU build; a GPU node swaps it (both ship one module: cluster/README.md)
ORT_GPU_SWAP = ("pip uninstall -y onnxruntime onnxruntime-gpu && pip install -c cluster/constraints-gpu.txt "
                "onnxruntime-gpu (as cluster/bootstrap.sh gpu does)")

log = logging.getLogger("skinray")
_OWN_LOCAL_RAY = False  # this process started the Ray it is connected to (no RAY_ADDRESS): nothing else adds nodes


def quiet_env(verbose: bool = False) -> dict[str, str]:
    """Environment for every skinray process (driver, Train workers, Data actors): libraries' chatter off."""
    if verbose:
        return {"TF_CPP_MIN_LOG_LEVEL": "1", "SKINRAY_VERBOSE": "1"}
    return {"TF_CPP_MIN_LOG_LEVEL": "3", "ABSL_MIN_LOG_LEVEL": "3", "GRPC_VERBOSITY": "ERROR",
            "TF_ENABLE_ONEDNN_OPTS": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "1"), "SKINRAY_QUIET": "1"}


def verbose() -> bool:
    return os.environ.get("SKINRAY_VERBOSE") == "1"


@contextmanager
def native_stderr_quiet() -> Iterator[None]:
    """Point the process's stderr (fd 2) at /dev/null for a moment: C++ start-up lines of TensorFlow and Ray's
    core worker are printed before any log level applies. A no-op with ``-v``."""
    if verbose():
        yield
        return
    sys.stderr.flush()
    saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


def installed(module: str) -> bool:
    """Whether ``module`` can be imported here, without importing it (TensorFlow takes seconds and gigabytes)."""
    if module in sys.modules:
        return True
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a finder that refuses it, or a half-imported module without a spec
        return False


def require_train_extra(purpose: str, modules: tuple[str, ...] = ("tensorflow",)) -> None:
    """Fail with one line, before any work, when ``purpose`` needs a package of the ``train`` extra that this
    install lacks: the base install only scores (ONNX Runtime)."""
    for module in modules:
        if not installed(module):
            name = TRAIN_EXTRA_NAMES.get(module, module)
            raise SkinrayError(f"{purpose} needs {name}, which is not installed: {TRAIN_EXTRA_INSTALL}")


def import_tensorflow(purpose: str = "this command") -> Any:
    """``import tensorflow`` with its native start-up lines (absl's pre-init notices, CUDA probing, oneDNN) off;
    one line naming the ``train`` extra where TensorFlow is not installed."""
    if "tensorflow" not in sys.modules:
        require_train_extra(purpose)
        for key, value in quiet_env(verbose()).items():
            os.environ.setdefault(key, value)
        with native_stderr_quiet():
            import tensorflow as tf

            tf.config.list_physical_devices()
    import tensorflow as tf

    return tf


def _reachable(address: str, timeout: float = 10.0) -> None:
    """A cluster address that does not answer ends the job at once as :class:`TemporaryError` (exit 75: retry
    later) — ``ray.init`` itself would wait minutes for a head that is down."""
    import socket
    from urllib.parse import urlparse

    if address in ("auto", "local") or "://" in address and not address.startswith("ray://"):
        return
    parsed = urlparse(address if "://" in address else f"ray://{address}")
    if parsed.hostname is None or parsed.port is None:
        return
    try:
        socket.create_connection((parsed.hostname, parsed.port), timeout=timeout).close()
    except OSError as exc:
        raise TemporaryError(f"cannot reach the Ray cluster at {address}: {exc} (retry later)") from exc


def ensure_ray(num_cpus: int | None = None) -> Any:
    """Connect once per process; returns the ``ray`` module. Library logs reach the console only with ``-v``."""
    import ray

    if ray.is_initialized():
        return ray
    env = quiet_env(verbose())
    for key, value in env.items():
        os.environ.setdefault(key, value)
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    os.environ.setdefault("RAY_agent_register_timeout_ms", AGENT_REGISTER_TIMEOUT_MS)
    if not verbose():  # the core worker's own notices (e.g. about actor constructor arguments) stay in Ray's logs
        os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
    kwargs: dict[str, Any] = {"logging_level": logging.INFO if verbose() else logging.ERROR,
                              "log_to_driver": verbose(), "runtime_env": {"env_vars": _not_set_by_job(env)}}
    global _OWN_LOCAL_RAY
    address = os.environ.get("RAY_ADDRESS")
    _OWN_LOCAL_RAY = not address
    if address:
        _reachable(address)
        try:
            with native_stderr_quiet():
                ray.init(address=address, **kwargs)
        except (ConnectionError, TimeoutError) as exc:  # the cluster is down or not up yet: retry later
            raise TemporaryError(f"cannot reach the Ray cluster at {address}: {str(exc).splitlines()[0]} "
                                 "(retry later)") from exc
    else:
        for attempt in range(LOCAL_START_TRIES):
            try:
                with native_stderr_quiet():
                    ray.init(address="local",  # never attach by accident to a cluster someone else started here
                             num_cpus=num_cpus, include_dashboard=False,
                             object_store_memory=LOCAL_OBJECT_STORE_BYTES, **kwargs)
                break
            except Exception as exc:  # a node that timed out during start-up on a loaded host: try once more
                if attempt + 1 == LOCAL_START_TRIES:
                    raise TemporaryError(f"cannot start a local Ray: {str(exc).splitlines()[0]}") from exc
                log.warning("local Ray did not start (%s); trying again", str(exc).splitlines()[0])
                ray.shutdown()
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = verbose() or _interactive()
    ctx.print_on_execution_start = False
    quiet_ray_loggers()
    return ray


def quiet_ray_loggers() -> None:
    """Ray's Python loggers to errors only (a no-op with ``-v``). Importing Ray's libraries configures their
    loggers, so this runs after ``ray.init`` and after any import of ``ray.train`` used without a cluster."""
    if verbose():
        return
    for name in ("ray", "ray.data", "ray.train", "ray.tune"):
        logging.getLogger(name).setLevel(logging.ERROR)
    # Ray Data logs the trace of whatever stops a plan; skinray reports it once, as one line or a traceback
    logging.getLogger("ray.data.exceptions").setLevel(logging.CRITICAL)


def _not_set_by_job(env: dict[str, str]) -> dict[str, str]:
    """Inside a submitted job, leave out variables the job's runtime_env sets (Ray refuses both setting one)."""
    import json

    job = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")
    if not job:
        return env
    try:
        taken = set(((json.loads(job).get("runtime_env") or {}).get("env_vars") or {}))
    except (ValueError, AttributeError):
        taken = set()
    return {k: v for k, v in env.items() if k not in taken}


def _interactive() -> bool:
    import sys

    return sys.stderr.isatty() and os.environ.get("SKINRAY_LOG_FORMAT", "text") == "text"


def node_id() -> str:
    """The Ray node this process runs on (a scoring actor, a training worker); outside Ray (predict), the host."""
    try:
        import ray

        if ray.is_initialized():
            return ray.get_runtime_context().get_node_id()
    except Exception:  # outside Ray: the host is the node
        pass
    return f"local:{os.uname().nodename}"


def cluster_cpus() -> int:
    import ray

    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def cluster_gpus() -> int:
    import ray

    return int(ray.cluster_resources().get("GPU", 0))


def wait_for_gpus(seconds: float) -> int:
    """GPUs in the cluster; when there are none yet, asks the autoscaler for one and waits up to ``seconds`` — but
    only where something can still add a GPU node.

    A GPU worker group that scales from zero has no GPU at start, so "no GPU now" is not an error; "no GPU after
    the wait" is, with one clear line. Nothing can add a node to the local Ray this process started (no
    ``RAY_ADDRESS``): that is said at once. On a cluster it joined, an autoscaler or an operator may add one, and
    the answer is waited for, unless the cluster's autoscaler itself says none of its node types has a GPU
    (:func:`_no_gpu_node_type`). A v1 autoscaler keeps its node types on the head node, out of a driver's sight,
    so there the wait is the only test.
    """
    gpus = cluster_gpus()
    if gpus:
        return gpus
    if _OWN_LOCAL_RAY:
        raise SkinrayError("--gpu: the local Ray this command started has no GPU and nothing can add one: run it on "
                           "a machine with a GPU, or on a cluster with GPU nodes (RAY_ADDRESS)")
    from ray.autoscaler.sdk import request_resources

    try:
        request_resources(bundles=[{"GPU": 1}])
    except Exception as exc:  # a cluster without an autoscaler: nothing to ask, just wait
        log.debug("request_resources: %s", exc)
    log.info("waiting up to %.0f s for a GPU node to join the Ray cluster", seconds)
    deadline = time.monotonic() + seconds
    v2 = _autoscaler_v2()
    try:
        while time.monotonic() < deadline:
            time.sleep(min(GPU_POLL_SECONDS, max(0.0, deadline - time.monotonic())))
            gpus = cluster_gpus()
            if gpus:
                return gpus
            why = _no_gpu_node_type() if v2 else None
            if why:
                raise SkinrayError(f"--gpu: the Ray cluster has no GPU and {why}: add a GPU worker group to it")
    finally:
        try:
            request_resources(bundles=[])  # the scoring pool makes its own requests from here on
        except Exception:
            pass
    raise SkinrayError(f"--gpu: no GPU joined the Ray cluster within {seconds:.0f} s (gpu_wait_seconds, --gpu-wait); "
                       "check the GPU worker group of the cluster")


def _autoscaler_v2() -> bool:
    try:
        from ray.autoscaler.v2.utils import is_autoscaler_v2

        return is_autoscaler_v2(fetch_from_server=True)
    except Exception as exc:  # an older or unreachable GCS: no answer, so the wait decides
        log.debug("is_autoscaler_v2: %s", exc)
        return False


def _no_gpu_node_type() -> str | None:
    """Why no GPU node can come, from the v2 autoscaler's own state in the GCS, or None (it may, or no answer).

    After ``request_resources`` the v2 autoscaler lists a request none of its node types can meet under
    ``infeasible_cluster_resource_constraints``. That counts only on a cluster whose nodes an autoscaler launched
    (they carry a node type name): on a hand-made cluster the autoscaler is read-only and calls everything
    infeasible, while an operator may still start a GPU node by hand.
    """
    try:
        import ray
        from ray._raylet import GcsClient
        from ray.core.generated.autoscaler_pb2 import GetClusterStatusReply

        reply = GetClusterStatusReply()
        reply.ParseFromString(GcsClient(ray.get_runtime_context().gcs_address).get_cluster_status(timeout_s=10))
    except Exception as exc:
        log.debug("get_cluster_status: %s", exc)
        return None
    return gpu_infeasible(reply)


def gpu_infeasible(reply: Any) -> str | None:
    """The decision of :func:`_no_gpu_node_type` on a ``GetClusterStatusReply``."""
    if not any(node.ray_node_type_name for node in reply.cluster_resource_state.node_states):
        return None
    for constraint in reply.autoscaling_state.infeasible_cluster_resource_constraints:
        if any(r.request.resources_bundle.get("GPU", 0) > 0 for r in constraint.resource_requests):
            return "its autoscaler has no node type with a GPU"
    return None


def versions() -> dict[str, str]:
    """Library versions recorded next to every output."""
    out = {"python": platform.python_version()}
    for name in ("skinray", "ray", "tensorflow", "keras", "onnxruntime", "onnxruntime-gpu", "deltalake", "numpy",
                 "pandas", "pyarrow", "scikit-learn", "pillow"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


IN_PROCESS_ROWS = 100_000  # dataset_from_frame's rows pass through Python dicts (~1 KB each) up to this many


def dataset_from_frame(df: Any, blocks: int) -> Any:
    """``df``'s rows as a Ray dataset in ``blocks`` pieces, built in this process.

    ``ray.data.from_pandas`` computes each block's metadata in a remote task: for 10,000 rows in 157 blocks a worker
    booted and spent ~5 CPU-s on it just as the scoring actors started, 2-3 s of the time to the first rows on 2
    CPUs (bench/RESULTS.md). ``from_items`` computes it here. The rows pass through Arrow first, so a missing value
    of any pandas dtype becomes a null. A frame Arrow cannot type (a column mixing numbers and text) keeps
    ``from_pandas``, and so does one above :data:`IN_PROCESS_ROWS`: its rows as dicts would cost the driver ~1 GB
    per million, and against a run that long the metadata tasks are a small cost.
    """
    import pyarrow as pa
    import ray

    blocks = max(1, min(int(blocks), len(df)))
    records = None
    if 0 < len(df) <= IN_PROCESS_ROWS:
        try:
            records = pa.Table.from_pandas(df, preserve_index=False).to_pylist()
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
            pass
    if records is not None:
        return ray.data.from_items(records, override_num_blocks=blocks)
    step = -(-len(df) // blocks) if len(df) else 1  # (from_pandas's own override_num_blocks breaks on pandas 3)
    return ray.data.from_pandas([df.iloc[i : i + step] for i in range(0, max(len(df), 1), step)])
