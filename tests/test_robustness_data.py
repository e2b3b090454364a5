"""Labels: the class set comes from the `ClassLabel` or from all splits; labels outside it are refused naming the
split and the value; classes that never occur in training are named in a warning."""

from hf_starsse.data import load_image_dataset

import logging

import pytest
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, Value
from recipe_fixtures import CLASS_NAMES, quadrant_images


def _split(labels, class_label=False):
    images, _ = quadrant_images(len(labels))
    feature = ClassLabel(names=CLASS_NAMES) if class_label else Value("int64")
    return Dataset.from_dict(
        {"image": images, "label": labels}, features=Features({"image": Image(), "label": feature})
    )


def test_integer_labels_with_gaps_are_class_ids_and_unseen_classes_are_named(caplog):
    data = DatasetDict({"train": _split([1, 4, 7, 10] * 3), "validation": _split([1, 4, 7, 10])})
    with caplog.at_level(logging.WARNING, logger="hf_starsse"):
        loaded = load_image_dataset(data)
    assert loaded.num_labels == 11
    assert caplog.messages == [
        "7 of 11 classes never occur in the train split (0, 2, 3, 5, 6, 8, 9); the model cannot learn them."
    ]


def test_validation_label_outside_the_training_labels_is_named(caplog):
    data = DatasetDict({"train": _split([0, 1, 2, 3] * 3), "validation": _split([0, 1, 9])})
    with caplog.at_level(logging.WARNING, logger="hf_starsse"):
        loaded = load_image_dataset(data)
    assert loaded.num_labels == 10
    assert caplog.messages == [
        "6 of 10 classes never occur in the train split (4, 5, 6, 7, 8, 9); the model cannot learn them but 1 of "
        "them occur in the held-out splits."
    ]


@pytest.mark.parametrize(
    "splits, message",
    [
        (
            {"train": ([0, 1, 2, 3] * 3, True), "test": ([0, 1, 5], False)},
            "Split 'test' has label 5 in `label`, outside [0, 4) set by the `ClassLabel` of `label`.",
        ),
        (
            {"train": ([0, 1, 2, 3] * 3, True), "test": ([0, -1], False)},
            "Split 'test' has label -1 in `label`, outside [0, 4) set by the `ClassLabel` of `label` (-1 marks "
            "unlabelled examples: choose a labelled split).",
        ),
        (
            {"train": ([0, 1, -3, 2], False), "validation": ([0, 1], False)},
            "Split 'train' has label -3 in `label`, outside [0, 3) set by the labels.",
        ),
    ],
)
def test_labels_outside_the_label_set_are_refused_naming_split_and_value(splits, message):
    data = DatasetDict({name: _split(labels, class_label) for name, (labels, class_label) in splits.items()})
    with pytest.raises(ValueError) as info:
        load_image_dataset(data)
    assert str(info.value) == message


def test_empty_in_memory_train_split_is_one_line():
    with pytest.raises(ValueError) as info:
        load_image_dataset(_split([]))
    assert str(info.value) == "`train_split` 'train' of the dataset is empty (0 examples): nothing to train on."
