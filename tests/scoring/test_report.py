"""The run's review page: every failed row named, even one without an id."""

import numpy as np
import pandas as pd

from skinray.scoring import report as score_report


def test_a_failed_row_without_an_id_is_named_by_its_input_row():
    rows = pd.DataFrame({"input_row": [0, 3, 4, 7], "isic_id": ["ISIC_1", None, np.nan, pd.NA],
                         "error": ["missing: x", "empty_id: no id", "empty_id: no id", "empty_id: no id"]})
    assert score_report._ids(rows) == ["ISIC_1", "(row 3)", "(row 4)", "(row 7)"]
