"""Checks `EnsembleTrainer.train()` runs before training (one line each), and one-line I/O errors while it saves."""

from __future__ import annotations

import errno
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from .bn_recalibration import has_batchnorm

logger = logging.getLogger(__name__)

MIN_BATCHNORM_BATCH = 8
_WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG)


def check_train_dataset(dataset: Any) -> None:
    """Refuse a missing or empty training set in one line (instead of torch's `num_samples should be ...`)."""
    if dataset is None:
        raise ValueError("`train_dataset` is required to train an ensemble.")
    try:
        size = len(dataset)
    except TypeError:
        return  # an iterable dataset: its length is unknown until it is read
    if size == 0:
        raise ValueError("`train_dataset` is empty (0 examples): nothing to train the members on.")


def check_output_dir_writable(run_dir: str | os.PathLike) -> None:
    """Create `run_dir` and write a probe file in it; raise a one-line `OSError` naming it when that fails."""
    run_dir = Path(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=run_dir, prefix=".write-probe.", suffix=".tmp"):
            pass
    except OSError as err:
        raise _os_error(
            err.errno, f"`output_dir` {run_dir} is not writable ({err.strerror or err}): choose another `output_dir`."
        ) from None


def last_batch_size(num_examples: int, batch_size: int, args: Any, even_batches: bool = True) -> int:
    """Samples in the last training batch of an epoch on one process (0 when every batch is full).

    Under several data-parallel processes Accelerate completes the last batches with samples from the start of the
    epoch (`even_batches`), so only a single process, `even_batches=False` or member-parallel training (each process
    reads the whole set) see a partial batch.
    """
    if args.dataloader_drop_last or batch_size < 1:
        return 0
    if args.world_size > 1 and even_batches and not args.member_parallel:
        return 0
    return num_examples % batch_size


def warn_small_batchnorm_tail(trainer: Any) -> str | None:
    """Warn when a BatchNorm model will see a last batch of fewer than 8 samples per process; returns the warning."""
    args = trainer.args
    try:
        num_examples = len(trainer.train_dataset)
    except TypeError:
        return None
    tail = last_batch_size(
        num_examples,
        args.per_device_train_batch_size,
        args,
        even_batches=getattr(trainer.accelerator, "even_batches", True),
    )
    if not 0 < tail < MIN_BATCHNORM_BATCH or not has_batchnorm(trainer.model):
        return None
    message = (
        f"The last training batch of every epoch holds {tail} sample(s) per process ({num_examples} examples, batch "
        f"{args.per_device_train_batch_size}) and the model has BatchNorm: in train mode it normalises over those "
        f"{tail} samples and their statistics enter the running averages; set `dataloader_drop_last=True` (or a "
        "batch size that divides the training set)."
    )
    logger.warning(message)
    return message


def is_write_error(err: BaseException) -> bool:
    """An I/O failure while writing (full disk, read-only or missing folder, ...), whichever library raised it."""
    if isinstance(err, OSError):
        return err.errno in _WRITE_ERRNOS
    text = str(err)
    name = type(err).__name__
    return (name == "SafetensorError" and ("IoError" in text or "Os {" in text)) or (
        isinstance(err, RuntimeError) and ("PytorchStreamWriter" in text or "file write failed" in text)
    )


def write_error(err: BaseException, what: str) -> OSError:
    """A one-line `OSError` saying what could not be written and that finished members are unchanged."""
    code = getattr(err, "errno", None)
    text = str(err)
    if code is None and ("No space left" in text or "StorageFull" in text):
        code = errno.ENOSPC
    reason = (getattr(err, "strerror", None) or os.strerror(code)) if code else text.strip().splitlines()[0]
    return _os_error(
        code or errno.EIO,
        f"Cannot write {what}: {reason}. Finished members are unchanged; fix the cause (e.g. free disk space) and run "
        "the same command again to resume.",
    )


def _os_error(code: int | None, message: str) -> OSError:
    """An `OSError` whose text is just `message` (no `[Errno N]` prefix) and whose `errno` is `code`."""
    err = OSError(message)
    err.errno = code
    return err
