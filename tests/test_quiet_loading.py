"""The expected new-head LOAD REPORT is hidden while members are built; any other load problem is still printed."""

from __future__ import annotations

from hf_starsse import EnsembleTrainer, EnsembleTrainingArguments
from hf_starsse.quiet_loading import expected_new_head, is_expected_new_head_report

import logging
from functools import partial

import pytest
from ensemble_fixtures import make_image_dataset, make_pretrained
from transformers import AutoModelForImageClassification

HEAD_ONLY = """ResNetForImageClassification LOAD REPORT from: /tmp/r
Key                 | Status   |
--------------------+----------+---------------------------------------------------------
classifier.1.bias   | MISMATCH | Reinit due to size mismatch - ckpt: torch.Size([10]) vs model:torch.Size([4])
classifier.1.weight | MISMATCH | Reinit due to size mismatch - ckpt: torch.Size([10, 16]) vs model:torch.Size([4, 16])
"""


def test_report_classification():
    assert is_expected_new_head_report(HEAD_ONLY)
    backbone = HEAD_ONLY + "resnet.encoder.stages.1.layers.0.shortcut.convolution.weight | MISMATCH | Reinit\n"
    assert not is_expected_new_head_report(backbone)
    assert not is_expected_new_head_report(HEAD_ONLY + "resnet.embedder.weight | MISSING |\n")
    assert not is_expected_new_head_report("some other warning")


def _load(checkpoint, **kwargs):
    return AutoModelForImageClassification.from_pretrained(checkpoint, ignore_mismatched_sizes=True, **kwargs)


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())

    def take(self) -> str:
        text, self.messages = "\n".join(self.messages), []
        return text


@pytest.fixture
def transformers_warnings():
    """What transformers' own handler would print (its loggers do not propagate to the root logger: no caplog)."""
    handler = _Records()
    logging.getLogger("transformers").addHandler(handler)
    yield handler
    logging.getLogger("transformers").removeHandler(handler)


def test_head_report_hidden_real_mismatch_kept(tmp_path, transformers_warnings):
    base = make_pretrained(tmp_path / "pretrained")
    transformers_warnings.take()
    with expected_new_head():
        _load(base, num_labels=4)
    text = transformers_warnings.take()
    assert "LOAD REPORT" not in text and "id2label" not in text
    with expected_new_head():
        _load(base, num_labels=4, hidden_sizes=[8, 12])  # backbone shapes differ: a real problem
    text = transformers_warnings.take()
    assert "LOAD REPORT" in text and "shortcut" in text
    _load(base, num_labels=4)  # outside the block: transformers' behaviour unchanged
    assert "LOAD REPORT" in transformers_warnings.take()


def test_trainer_members_print_no_head_report(tmp_path, capsys, transformers_warnings):
    base = make_pretrained(tmp_path / "pretrained")
    args = EnsembleTrainingArguments(
        output_dir=str(tmp_path / "run"),
        ensemble_strategy="local_de",
        num_members=2,
        num_train_epochs=1,
        per_device_train_batch_size=16,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        use_cpu=True,
    )
    capsys.readouterr()
    trainer = EnsembleTrainer(
        model_init=partial(_load, base, num_labels=4), args=args, train_dataset=make_image_dataset(16)
    )
    trainer.train()
    out = capsys.readouterr().out
    assert (tmp_path / "run" / "members" / "member-1").is_dir()
    assert "[hf_starsse] local_de member-1 of 2" in out
    assert "LOAD REPORT" not in transformers_warnings.take()
