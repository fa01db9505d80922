"""Table VI: exact-match accuracy of the sum token for "sum <VAR1> <VAR2>" queries (data.num_query_template), by N.
The model must recall two planted values and combine them."""

from __future__ import annotations

from pipeline.evaluate.predict import ByLengthTask

TASK = "numeric"
_TASK = ByLengthTask(TASK)
splits, select, score, score_by_type, predict = (
    _TASK.splits, _TASK.select, _TASK.score, _TASK.score_by_type, _TASK.predict)
