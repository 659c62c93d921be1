"""skinray.runtime: the dataset that scoring, evaluation and prepare start their Ray Data plans from."""

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from skinray import runtime
from skinray.runtime import dataset_from_frame

pytestmark = pytest.mark.slow


def _plain(values):
    return [None if (v is None or v is pd.NA or (isinstance(v, float) and np.isnan(v))) else v for v in values]


def _rows(ds) -> pd.DataFrame:
    return pd.DataFrame(ds.take_all()).sort_values("input_row").reset_index(drop=True)


@pytest.mark.parametrize("in_process", [True, False])
def test_a_frame_becomes_blocks_row_for_row_with_missing_values_as_nulls(ray_session, monkeypatch, in_process):
    if not in_process:  # a frame above the in-process limit goes through from_pandas: the same rows
        monkeypatch.setattr(runtime, "IN_PROCESS_ROWS", 3)
    df = pd.DataFrame({
        "input_row": np.arange(7),
        "image_uri": ["a.jpg", "b.jpg", None, "d.jpg", "e.jpg", "f.jpg", "g.jpg"],
        "label": [1.0, np.nan, 0.0, 1.0, np.nan, 0.0, 1.0],
        "dx": pd.array(["mel", pd.NA, "nv", "nv", "bcc", None, "nv"], dtype="string"),
        "age": pd.array([40, None, 55, None, 70, 35, 80], dtype="Int64"),
        "input_error": None,  # every row: a column of nulls
    })
    ds = dataset_from_frame(df, 3)
    assert ds.num_blocks() == 3 and ds.count() == 7
    got = _rows(ds)
    assert got["input_row"].tolist() == list(range(7))
    for col in ("image_uri", "label", "dx", "age", "input_error"):
        assert _plain(got[col].tolist()) == _plain(df[col].tolist()), col


def test_a_frame_arrow_cannot_type_and_an_empty_one_still_become_datasets(ray_session):
    mixed = pd.DataFrame({"input_row": np.arange(5), "note": [1, "two", 3.5, None, "5"]})
    with pytest.raises((pa.ArrowInvalid, pa.ArrowTypeError)):  # the from_pandas path, then
        pa.Table.from_pandas(mixed)
    ds = dataset_from_frame(mixed, 2)
    assert ds.num_blocks() == 2
    assert _plain(_rows(ds)["note"].tolist()) == [1, "two", 3.5, None, "5"]
    assert dataset_from_frame(mixed.iloc[:0], 4).count() == 0


def test_no_gpu_on_the_local_ray_is_said_at_once_not_after_the_wait(ray_session):
    import time

    from skinray import SkinrayError

    started = time.monotonic()
    with pytest.raises(SkinrayError, match="the local Ray this command started has no GPU and nothing can add one"):
        runtime.wait_for_gpus(60)
    assert time.monotonic() - started < 30  # much less than the wait it was given


def _status(node_types, infeasible):
    from ray.core.generated.autoscaler_pb2 import GetClusterStatusReply

    reply = GetClusterStatusReply()
    for name in node_types:
        reply.cluster_resource_state.node_states.add(ray_node_type_name=name)
    constraint = reply.autoscaling_state.infeasible_cluster_resource_constraints.add()
    for bundle in infeasible:
        constraint.resource_requests.add(count=1).request.resources_bundle.update(bundle)
    return reply


def test_a_v2_autoscaler_without_gpu_node_types_is_believed_only_on_a_cluster_it_launched():
    assert runtime.gpu_infeasible(_status(["headgroup", "cpu-workers"], [{"GPU": 1}])) == \
        "its autoscaler has no node type with a GPU"
    assert runtime.gpu_infeasible(_status(["headgroup", "gpu-workers"], [{"CPU": 64}])) is None  # a GPU may come
    assert runtime.gpu_infeasible(_status(["", ""], [{"GPU": 1}])) is None  # hand-made: an operator may add one
