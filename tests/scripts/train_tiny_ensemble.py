"""Train a tiny ensemble from the command line (run by the multi-process tests under `accelerate launch`).

    accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no --dynamo_backend no \
        tests/scripts/train_tiny_ensemble.py PRETRAINED RUN_DIR STRATEGY NUM_MEMBERS [--member-parallel]
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import hf_starsse  # noqa: E402,F401  (first)
from hf_starsse import EnsembleTrainer, EnsembleTrainingArguments  # noqa: E402

from ensemble_fixtures import StepCounter, make_image_dataset, model_init_for  # noqa: E402


def main() -> None:
    pretrained, run_dir, strategy, num_members = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    args = EnsembleTrainingArguments(
        output_dir=run_dir,
        ensemble_strategy=strategy,
        num_members=num_members,
        member_parallel="--member-parallel" in sys.argv,
        num_train_epochs=2,
        per_device_train_batch_size=4,  # x 2 processes = the 1-process batch of 8
        learning_rate=0.05,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        logging_strategy="no",
        use_cpu=True,
        ddp_backend="gloo",
    )
    counter = StepCounter()
    trainer = EnsembleTrainer(
        model_init=model_init_for(pretrained),
        args=args,
        train_dataset=make_image_dataset(32),
        eval_dataset=make_image_dataset(16, seed=1),
        callbacks=[counter],
    )
    output = trainer.train()
    report = {
        "process_index": args.process_index,
        "world_size": args.world_size,
        "trained": output.trained,
        "trainer_steps": counter.steps,
    }
    (Path(run_dir) / f"process-{args.process_index}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main()
