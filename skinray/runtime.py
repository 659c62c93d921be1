"""Ray is started in exactly one place: join the cluster named by ``RAY_ADDRESS``, else start a local one."""

from __future__ import annotations

import logging
import os
import platform
from importlib import metadata
from typing import Any

LOCAL_OBJECT_STORE_BYTES = 2 * 1024**3  # enough for streaming; a 2-core laptop keeps the rest for workers


def ensure_ray(num_cpus: int | None = None) -> Any:
    """Connect once per process; quiet logs; returns the ``ray`` module."""
    import ray

    if ray.is_initialized():
        return ray
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    address = os.environ.get("RAY_ADDRESS")
    kwargs: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": True}
    if address:
        ray.init(address=address, **kwargs)
    else:
        ray.init(
            address="local",  # never attach by accident to a cluster someone else started on this host
            num_cpus=num_cpus,
            include_dashboard=False,
            object_store_memory=LOCAL_OBJECT_STORE_BYTES,
            runtime_env={"env_vars": {"TF_CPP_MIN_LOG_LEVEL": "2"}},
            **kwargs,
        )
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = True
    ctx.print_on_execution_start = False
    return ray


def cluster_cpus() -> int:
    import ray

    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def cluster_gpus() -> int:
    import ray

    return int(ray.cluster_resources().get("GPU", 0))


def versions() -> dict[str, str]:
    """Library versions recorded next to every output."""
    out = {"python": platform.python_version()}
    for name in ("skinray", "ray", "tensorflow", "keras", "onnxruntime", "numpy", "pandas", "pyarrow",
                 "scikit-learn", "pillow"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def dataset_from_frame(df: Any, blocks: int) -> Any:
    """``ray.data.from_pandas`` in ``blocks`` pieces (its own ``override_num_blocks`` breaks on pandas 3)."""
    import ray

    blocks = max(1, min(int(blocks), len(df)))
    step = -(-len(df) // blocks) if len(df) else 1
    return ray.data.from_pandas([df.iloc[i : i + step] for i in range(0, max(len(df), 1), step)])
