"""The two kinds of pandera check the conversion contract is made of, built to run in a
few passes over a column or the frame rather than a Python call per value.

* `column_check`: a vectorised predicate over one column (`text_checks`), named for what
  is wrong. Missing values pass it, so pandera needn't drop them first (a copy of the
  column per check); the column's `nullable` decides about them.
* `RowCheck`: a check over whole rows (an event time against the time received, a value
  with its currency). Pandera reports a failing row of a frame-wide check as every cell
  of it (a stack of the failing rows over all columns, about 0.1 s per check for a
  thousand rows); a `RowCheck` reports the failing rows' index only, which is all the
  quarantine reads. Whether a row passes is decided exactly as by `pa.Check`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import pandera.pandas as pa
from pandera.api.base.checks import CheckResult
from pandera.backends.pandas.checks import PandasCheckBackend


def column_check(
    test: Callable[[pd.Series], np.ndarray], name: str, **statistics: object
) -> pa.Check:
    """A column check from a vectorised predicate (True passes; missing values must pass)."""
    return pa.Check(
        lambda values: pd.Series(test(values), index=values.index),
        name=name,
        error=name,
        ignore_na=False,
        statistics=statistics,
    )


class RowCheck(pa.Check):
    """A frame-wide check whose failure cases are the failing rows' index (see above).

    Its function takes the frame and returns a boolean Series on the frame's index, and
    must let rows with missing values pass where another check already fails them (NA is
    not dropped: `ignore_na` is always False, which spares a test of every cell).
    """

    def __init__(self, check_fn: Callable[[pd.DataFrame], pd.Series], *, name: str) -> None:
        super().__init__(check_fn, name=name, ignore_na=False)


class _RowCheckBackend(PandasCheckBackend):
    def postprocess_table_with_field_output(
        self, check_obj: pd.DataFrame, check_output: pd.Series
    ) -> CheckResult:
        passed = check_output.astype(bool)
        if not check_obj.index.equals(passed.index):
            return super().postprocess_table_with_field_output(check_obj, check_output)
        return CheckResult(passed, bool(passed.all()), check_obj, passed[~passed])


RowCheck.register_backend(pd.DataFrame, _RowCheckBackend)
