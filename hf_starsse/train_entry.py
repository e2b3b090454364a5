"""The training entry point shared by `recipes/train.py` and `hf-starsse train`: a YAML / JSON recipe plus command line
overrides, parsed by `HfArgumentParser` into [`ModelArguments`], [`DataArguments`], [`EnsembleTrainingArguments`]
and [`RunArguments`]; `--dry-run` prints the resolved member plan without loading a model."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from dataclasses import dataclass, field, fields
from functools import partial
from pathlib import Path

import numpy as np

from .divergence import MemberDivergedError
from .ensemble_config import EnsembleTrainingArguments
from .ensemble_plan import describe_plan, plan_members
from .file_utils import atomic_write_json
from .model_loading import MODEL_FAMILIES
from .run_folder import LAUNCH_INFO_NAME, MemberBusyError, RunFolder  # noqa: F401  (LAUNCH_INFO_NAME: kept importable from here)


@dataclass
class ModelArguments:
    """Which pre-trained checkpoint to fine-tune and how to build its head."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Pre-trained checkpoint: Hub id (e.g. microsoft/resnet-50, timm/...) or folder."},
    )
    model_family: str | None = field(
        default=None,
        metadata={"help": "Loader family; detected from the config when not set.", "choices": list(MODEL_FAMILIES)},
    )
    num_labels: int | None = field(
        default=None, metadata={"help": "Expected number of classes; checked against the dataset's labels."}
    )
    clip_zero_shot_head: bool = field(
        default=False,
        metadata={"help": "CLIP: initialise the head from the text tower's embeddings of prompts of the class names."},
    )
    prompt_templates: list[str] | None = field(
        default=None, metadata={"help": "CLIP zero-shot prompt templates with one `{}` (default: CLIP's 7 templates)."}
    )
    config_overrides: str | None = field(
        default=None, metadata={"help": "Model config attributes to set, `key=value,...` (e.g. `drop_path_rate=0.1`)."}
    )
    model_revision: str = field(
        default="main", metadata={"help": "Hub revision (branch, tag or commit) of the model."}
    )
    cache_dir: str | None = field(default=None, metadata={"help": "Cache folder for Hub models and datasets."})

    def __post_init__(self):
        if self.model_family is not None and self.model_family not in MODEL_FAMILIES:
            raise ValueError(
                f"`model_family` should be one of {', '.join(MODEL_FAMILIES)}, got {self.model_family!r}."
            )
        if self.num_labels is not None and self.num_labels < 1:
            raise ValueError(f"`num_labels` should be positive, got {self.num_labels}.")
        self.parsed_config_overrides()

    def parsed_config_overrides(self) -> dict:
        """`config_overrides` as a dict (values parsed as JSON when possible: numbers, booleans)."""
        out = {}
        for item in filter(None, (s.strip() for s in (self.config_overrides or "").split(","))):
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                raise ValueError(f"`config_overrides` should be `key=value,...`, got {item!r}.")
            try:
                out[key.strip()] = json.loads(value)
            except json.JSONDecodeError:
                out[key.strip()] = value.strip()
        return out


@dataclass
class DataArguments:
    """Which dataset, which columns and splits, and how images are augmented."""

    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "Hub dataset name, a `save_to_disk` folder or an `imagefolder` folder of class sub-folders."
        },
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "Hub dataset configuration name."})
    image_column: str | None = field(default=None, metadata={"help": "Image column (detected when not set)."})
    label_column: str | None = field(default=None, metadata={"help": "Label column (detected when not set)."})
    train_split: str = field(default="train", metadata={"help": "Split to train on."})
    validation_split: str | None = field(
        default=None,
        metadata={
            "help": "Held-out split; default: `validation` if present, else carved from train (`validation_size`)."
        },
    )
    test_split: str | None = field(default=None, metadata={"help": "Test split; default: `test` when present."})
    validation_size: float = field(
        default=0.1,
        metadata={"help": "Fraction (< 1) or count of the train split carved out as validation if needed."},
    )
    image_size: int | None = field(
        default=None, metadata={"help": "Crop side in pixels (default: the model's image processor / timm config)."}
    )
    train_augmentation: str = field(
        default="standard",
        metadata={
            "help": "standard: RandomResizedCrop + flip; randaugment: + timm RandAugment; none: eval transform.",
            "choices": ["standard", "randaugment", "none"],
        },
    )
    rand_augment: str = field(default="rand-m9-mstd0.5-inc1", metadata={"help": "timm RandAugment config string."})
    mixup_alpha: float = field(default=0.0, metadata={"help": "Mixup alpha (timm Mixup; 0 disables)."})
    cutmix_alpha: float = field(default=0.0, metadata={"help": "CutMix alpha (timm Mixup; 0 disables)."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Keep only the first N training examples."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Keep only the first N validation examples."})
    train_size: int | None = field(
        default=None,
        metadata={"help": "Training examples after the validation carve: lets --dry-run plan without loading data."},
    )

    def __post_init__(self):
        if self.validation_size <= 0:
            raise ValueError(f"`validation_size` should be positive, got {self.validation_size}.")
        if self.validation_size >= 1 and int(self.validation_size) != self.validation_size:
            raise ValueError(
                f"`validation_size` should be a fraction < 1 or an integer count, got {self.validation_size}."
            )
        if self.validation_size >= 1:
            self.validation_size = int(self.validation_size)
        for name in ("mixup_alpha", "cutmix_alpha"):
            if getattr(self, name) < 0:
                raise ValueError(f"`{name}` should be >= 0, got {getattr(self, name)}.")
        for name in ("image_size", "max_train_samples", "max_eval_samples", "train_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"`{name}` should be positive, got {value}.")


@dataclass
class RunArguments:
    """How this command runs."""

    config: str | None = field(
        default=None, metadata={"help": "YAML or JSON recipe; command-line arguments override its values."}
    )
    dry_run: bool = field(
        default=False,
        metadata={"help": "Print the resolved plan (members, steps per cycle, LR per cycle, total steps) and exit."},
    )
    dry_run_num_processes: int | None = field(
        default=None, metadata={"help": "World size assumed by --dry-run (default: the current one)."}
    )


ARGUMENT_CLASSES = (ModelArguments, DataArguments, EnsembleTrainingArguments, RunArguments)


def build_parser(prog: str | None = None):
    from transformers import HfArgumentParser

    parser = HfArgumentParser(ARGUMENT_CLASSES, prog=prog)
    parser.description = "Fine-tune an ensemble (Local DE, Global DE, SSE, StarSSE) from a recipe."
    return parser


def load_recipe(path: str | os.PathLike) -> dict:
    """Read a YAML or JSON recipe into a flat dict of argument values."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Recipe {str(path)!r} does not exist.")
    text = path.read_text()
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as err:
        raise ValueError(
            f"Recipe {str(path)!r} is not valid {path.suffix[1:].upper()}: {err}".splitlines()[0]
        ) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ValueError(f"Recipe {str(path)!r} should hold a mapping of argument names to values.")
    return data


def parse_arguments(argv: list[str] | None = None, prog: str | None = None):
    """Parse `--config R` (if any) and the command line into the four argument dataclasses."""
    argv = list(sys.argv[1:] if argv is None else argv)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
    known, _ = pre.parse_known_args(argv)
    parser = build_parser(prog)
    if known.config:
        recipe = load_recipe(known.config)
        check_recipe_fields(recipe, f"Recipe {known.config!r}")
        parser.set_defaults(**recipe)
    return _checked(parser.parse_args_into_dataclasses(args=argv))


def check_recipe_fields(recipe: dict, where: str) -> None:
    """Refuse recipe keys that are no argument of `hf-starsse train` (one line naming them)."""
    valid = {f.name for cls in ARGUMENT_CLASSES for f in fields(cls) if f.init}
    unknown = sorted(set(recipe) - valid)
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {', '.join(unknown)}.")


def arguments_from_recipe(recipe: dict, prog: str | None = None):
    """The four argument dataclasses of a recipe given as a dict (as `--config` with no command-line overrides)."""
    check_recipe_fields(recipe, "Recipe")
    parser = build_parser(prog)
    parser.set_defaults(**recipe)
    return _checked(parser.parse_args_into_dataclasses(args=[]))


def _checked(parsed: tuple) -> tuple:
    model_args, data_args, training_args, run_args = parsed
    if model_args.model_name_or_path is None:
        raise ValueError("`model_name_or_path` is required (in the recipe or as --model_name_or_path).")
    if data_args.dataset_name is None:
        raise ValueError("`dataset_name` is required (in the recipe or as --dataset_name).")
    return model_args, data_args, training_args, run_args


def steps_per_epoch(num_examples: int, args: EnsembleTrainingArguments, num_processes: int) -> int:
    """Optimizer steps of one epoch of `num_examples` shared by `num_processes` data-parallel processes."""
    global_batch = args.per_device_train_batch_size * num_processes
    batches = num_examples // global_batch if args.dataloader_drop_last else math.ceil(num_examples / global_batch)
    accum = args.gradient_accumulation_steps
    return max(1, math.ceil(batches / accum))


def dry_run(model_args: ModelArguments, data_args: DataArguments, args: EnsembleTrainingArguments, run_args) -> str:
    """The resolved plan as text (no model is loaded; data is loaded only when `train_size` is not given)."""
    num_processes = run_args.dry_run_num_processes or args.world_size
    if data_args.train_size is not None:
        num_examples = data_args.train_size
    else:
        from .data import load_image_dataset

        data = load_image_dataset(
            data_args.dataset_name, **_dataset_kwargs(data_args, args.seed, model_args.cache_dir)
        )
        num_examples = len(data.splits["train"])
    if data_args.max_train_samples is not None:
        num_examples = min(num_examples, data_args.max_train_samples)
    steps = steps_per_epoch(num_examples, args, num_processes)
    plans = plan_members(args, steps, base_model=model_args.model_name_or_path)
    lines = [
        f"model: {model_args.model_name_or_path}  dataset: {data_args.dataset_name}  output_dir: {args.output_dir}",
        f"training examples: {num_examples}, processes: {num_processes}, global batch: "
        f"{args.per_device_train_batch_size * num_processes * args.gradient_accumulation_steps}, "
        f"optimizer steps per epoch: {steps}",
        f"optimizer: {getattr(args.optim, 'value', args.optim)} {args.optim_args or ''}, lr {args.learning_rate:g}, "
        f"weight decay {args.weight_decay:g}, warmup {args.warmup_steps:g}, cycle warmup {args.cycle_warmup_steps:g}",
        describe_plan(args, plans),
    ]
    cycles = [p for p in plans if p.is_cycle]
    if cycles:
        lines.append(f"steps per cycle: {cycles[0].num_steps}, LR per cycle: {cycles[0].peak_learning_rate:g} (peak)")
    lines.append(f"total optimizer steps: {sum(p.num_steps for p in plans)}")
    return "\n".join(lines)


def _dataset_kwargs(data_args: DataArguments, seed: int, cache_dir: str | None) -> dict:
    return dict(
        dataset_config_name=data_args.dataset_config_name,
        image_column=data_args.image_column,
        label_column=data_args.label_column,
        train_split=data_args.train_split,
        validation_split=data_args.validation_split,
        test_split=data_args.test_split,
        validation_size=data_args.validation_size,
        seed=seed,
        cache_dir=cache_dir,
    )


def _accuracy(eval_pred) -> dict[str, float]:
    logits, labels = eval_pred.predictions, eval_pred.label_ids
    logits = logits[0] if isinstance(logits, tuple) else logits
    return {"accuracy": float((np.asarray(logits).argmax(-1) == np.asarray(labels)).mean())}


def run_training(model_args: ModelArguments, data_args: DataArguments, args: EnsembleTrainingArguments, dataset=None):
    """Load data and model, train the ensemble, and record the launch (processes, who saved) in `launch.json`.

    Args:
        model_args ([`ModelArguments`]), data_args ([`DataArguments`]), args ([`EnsembleTrainingArguments`]):
            The parsed arguments.
        dataset (`Dataset` or `DatasetDict`, *optional*):
            An in-memory dataset to use instead of `data_args.dataset_name` (Python API).
    """
    from transformers import AutoImageProcessor

    from .data import (
        build_transforms,
        check_num_labels,
        image_spec_from_processor,
        load_image_dataset,
        with_image_transforms,
    )
    from .ensemble_trainer import EnsembleTrainer
    from .model_loading import load_global_de_member, make_model_init

    args.remove_unused_columns = False  # the lazy transforms need the raw image / label columns
    source = dataset if dataset is not None else data_args.dataset_name
    data = load_image_dataset(source, **_dataset_kwargs(data_args, args.seed, model_args.cache_dir))
    if model_args.num_labels is not None:
        check_num_labels(data, model_args.num_labels, where="`num_labels`")
    if data_args.max_train_samples is not None:
        data.splits["train"] = data.splits["train"].select(
            range(min(data_args.max_train_samples, len(data.splits["train"])))
        )
    if data_args.max_eval_samples is not None:
        val = data.splits["validation"]
        data.splits["validation"] = val.select(range(min(data_args.max_eval_samples, len(val))))
    first_checkpoint = (
        args.pretrained_checkpoints[0] if args.ensemble_strategy == "global_de" else model_args.model_name_or_path
    )
    try:
        processor = AutoImageProcessor.from_pretrained(
            first_checkpoint, revision=model_args.model_revision, cache_dir=model_args.cache_dir
        )
    except (OSError, ValueError) as err:
        raise ValueError(
            f"Cannot load the image processor of model {first_checkpoint!r}: {str(err).splitlines()[0]}"
        ) from None
    train_tf, eval_tf = build_transforms(
        image_spec_from_processor(processor, data_args.image_size),
        data_args.train_augmentation,
        data_args.rand_augment,
    )
    splits = with_image_transforms(data, train_tf, eval_tf)
    load_kwargs = dict(
        id2label=data.id2label,
        label2id=data.label2id,
        family=model_args.model_family,
        clip_zero_shot_class_names=data.label_names if model_args.clip_zero_shot_head else None,
        prompt_templates=model_args.prompt_templates,
        config_overrides=model_args.parsed_config_overrides(),
        revision=model_args.model_revision,
        cache_dir=model_args.cache_dir,
    )
    if args.ensemble_strategy == "global_de":
        model_init = partial(load_global_de_member, num_labels=data.num_labels, **load_kwargs)
    else:
        model_init = make_model_init(model_args.model_name_or_path, data.num_labels, **load_kwargs)
    trainer_kwargs = dict(
        model_init=model_init,
        args=args,
        train_data_info=_train_data_info(data_args, data.splits["train"], in_memory=dataset is not None),
        train_dataset=splits["train"],
        eval_dataset=splits["validation"],
        processing_class=processor,
        compute_metrics=_accuracy,
    )
    if data_args.mixup_alpha > 0 or data_args.cutmix_alpha > 0:
        from .mixup import MixupEnsembleTrainer

        trainer = MixupEnsembleTrainer(
            num_labels=data.num_labels,
            mixup_alpha=data_args.mixup_alpha,
            cutmix_alpha=data_args.cutmix_alpha,
            **trainer_kwargs,
        )
    else:
        trainer = EnsembleTrainer(**trainer_kwargs)
    output = trainer.train(resume_from_checkpoint=resume_argument(args.resume_from_checkpoint))
    _record_launch(trainer, output.run_dir)
    return output


def resume_argument(value: str | bool | None) -> str | bool | None:
    """`--resume_from_checkpoint`: `true` resumes the interrupted member from its last Trainer checkpoint, a path
    resumes from that checkpoint, `false` / unset starts the unfinished member afresh."""
    if value is None or isinstance(value, bool):
        return value
    text = str(value).strip()
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no", ""):
        return None
    if not os.path.isdir(text):
        raise FileNotFoundError(f"`resume_from_checkpoint` {text!r} is not a checkpoint folder (or `true`).")
    return text


def _train_data_info(data_args: DataArguments, train, in_memory: bool) -> dict:
    """The training data as the manifest fingerprints it: the dataset given, its split and the `datasets`
    fingerprint of the split before the lazy image transforms (which would hash the transform functions)."""
    return {
        "source": None if in_memory else data_args.dataset_name,
        "config": data_args.dataset_config_name,
        "split": data_args.train_split,
        "fingerprint": getattr(train, "_fingerprint", None),
    }


def _record_launch(trainer, run_dir: str) -> None:
    """Write `launch.json`: process count, distributed type and which processes wrote members (main only)."""
    from accelerate.utils import gather_object

    accelerator, args = trainer.accelerator, trainer.args
    saving = gather_object([{"process_index": accelerator.process_index, "should_save": bool(args.should_save)}])
    if args.should_save:
        atomic_write_json(
            RunFolder(run_dir).launch_info_path,
            {
                "num_processes": accelerator.num_processes,
                "world_size": args.world_size,
                "distributed_type": str(accelerator.distributed_type),
                "processes": saving,
            },
        )
    accelerator.wait_for_everyone()


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Parse, then dry-run or train. Raises `ValueError` / `FileNotFoundError` on bad input."""
    model_args, data_args, training_args, run_args = parse_arguments(argv, prog)
    if run_args.dry_run:
        print(dry_run(model_args, data_args, training_args, run_args), flush=True)
        return 0
    output = run_training(model_args, data_args, training_args)
    if training_args.should_log:
        print(f"[hf_starsse] run finished: {output.run_dir} (trained {output.trained}, kept {output.skipped})")
    return 0


def cli_main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """`main` with bad input reported as one line on stderr (exit code 1)."""
    try:
        return main(argv, prog)
    except (ValueError, OSError, TypeError, MemberDivergedError, MemberBusyError) as err:
        lines = str(err).strip().splitlines()
        print(f"{prog or 'train'}: error: {lines[0] if lines else repr(err)}", file=sys.stderr)
        return 1
