"""Hide transformers' report of the *expected* new classification head while loading members; keep every other one.

Fine-tuning a checkpoint on new labels (`from_pretrained(ckpt, num_labels=N, ignore_mismatched_sizes=True)`) makes
transformers log a "LOAD REPORT" table with MISMATCH rows for the head (and a note that `num_labels` does not match the
checkpoint's `id2label`), as a warning, for every member. [`expected_new_head`] filters exactly those records while a
member's model is built: a report is dropped only when all its rows are MISMATCH rows of head parameters
(`HEAD_MODULE_NAMES`); any missing, unexpected or backbone-mismatched key is still printed. One INFO line per process
says a new head was created.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator

logger = logging.getLogger(__name__)

# Module names under which transformers / timm classifiers keep their head.
HEAD_MODULE_NAMES = frozenset({"classifier", "head", "heads", "fc", "score", "logits"})
_REPORT_LOGGERS = ("transformers.modeling_utils", "transformers.configuration_utils")
_ROW = re.compile(r"^(?P<key>\S[^|]*?)\s*\|\s*(?P<status>[A-Z_]+)\s*\|")
_announced = False


def is_expected_new_head_report(message: str) -> bool:
    """Whether `message` is a LOAD REPORT whose only rows are size mismatches of head parameters."""
    if "LOAD REPORT" not in message:
        return False
    rows = [m for m in map(_ROW.match, message.splitlines()) if m and m["key"].strip() != "Key"]
    if not rows:
        return False
    return all(row["status"] == "MISMATCH" and HEAD_MODULE_NAMES.intersection(row["key"].split(".")) for row in rows)


class _NewHeadFilter(logging.Filter):
    def __init__(self):
        super().__init__()
        self.hidden = 0

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if is_expected_new_head_report(message) or "which is incompatible to the `id2label` map" in message:
            self.hidden += 1
            return False
        return True


@contextlib.contextmanager
def expected_new_head() -> Iterator[None]:
    """Hide the head-only LOAD REPORT of `from_pretrained(..., ignore_mismatched_sizes=True)` within this block."""
    global _announced
    head_filter = _NewHeadFilter()
    loggers = [logging.getLogger(name) for name in _REPORT_LOGGERS]
    for report_logger in loggers:
        report_logger.addFilter(head_filter)
    try:
        yield
    finally:
        for report_logger in loggers:
            report_logger.removeFilter(head_filter)
    if head_filter.hidden and not _announced:
        _announced = True
        logger.info("Members get a new classification head (transformers' size-mismatch report for it is hidden).")
