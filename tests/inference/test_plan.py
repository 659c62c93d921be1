"""The Ray Data plan: what stops it reaches the user as one line."""

import pytest

pytestmark = pytest.mark.slow


class _FailingPlan:
    """Stands in for a Ray Data plan: one batch, then ``exc``."""

    def __init__(self, exc: Exception) -> None:
        self.exc = exc

    def iter_batches(self, **_: object):
        import pandas as pd

        yield pd.DataFrame({"input_row": [0]})
        raise self.exc


def test_what_stops_the_plan_reaches_the_user_as_one_line():
    from ray.exceptions import GetTimeoutError, RayTaskError

    from skinray import SkinrayError
    from skinray.config import load_config
    from skinray.inference.plan import pipeline_batches

    cfg = load_config(overrides={"inference.actor_start_seconds": 7})
    remote = RayTaskError("ImagePredictor.__init__", "Traceback (most recent call last):\n  File \"x.py\", line 1\n"
                          "skinray.SkinrayError: model.onnx does not match its checksum",
                          SkinrayError("model.onnx does not match its checksum")).as_instanceof_cause()
    assert isinstance(remote, SkinrayError) and len(str(remote).splitlines()) > 1
    timeout = GetTimeoutError("Timed out while starting actors. This may mean that the cluster does not have enough")
    ours = SkinrayError("run r was taken over by another process")
    for exc, expected in [(remote, "model.onnx does not match its checksum"),
                          (timeout, "did not all start within 7 s (inference.actor_start_seconds)"), (ours, None)]:
        batches = pipeline_batches(_FailingPlan(exc), cfg)
        assert len(next(batches)) == 1
        with pytest.raises(SkinrayError) as raised:
            next(batches)
        if expected is None:
            assert raised.value is ours
        else:
            assert expected in str(raised.value) and len(str(raised.value).splitlines()) == 1
    with pytest.raises(ValueError):  # a bug keeps its traceback
        list(pipeline_batches(_FailingPlan(ValueError("boom")), cfg))
