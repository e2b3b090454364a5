"""Train a tiny StarSSE run (the crash-safety and member-job tests run it as a subprocess, killed at crash points).

    python tests/scripts/train_star_run.py PRETRAINED RUN_DIR [--member_indices 1,3] [--save_steps N]

Prints `RESULT {"trained": [...], "skipped": [...]}`; `HF_STARSSE_CRASH_AT` kills it at a named moment.
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import hf_starsse  # noqa: E402,F401  (first)
from hf_starsse import EnsembleTrainer, EnsembleTrainingArguments  # noqa: E402

from ensemble_fixtures import StepCounter, make_image_dataset, model_init_for  # noqa: E402

NUM_MEMBERS = 5


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("pretrained")
    parser.add_argument("run_dir")
    parser.add_argument("--member_indices", default=None)
    parser.add_argument("--save_steps", type=int, default=0)
    parser.add_argument("--num_examples", type=int, default=16)
    cli = parser.parse_args()
    args = EnsembleTrainingArguments(
        output_dir=cli.run_dir,
        ensemble_strategy="star_sse",
        num_members=NUM_MEMBERS,
        member_indices=cli.member_indices,
        num_train_epochs=1,
        per_device_train_batch_size=8,
        learning_rate=0.05,
        save_strategy="steps" if cli.save_steps else "no",
        save_steps=cli.save_steps or 500,
        report_to="none",
        disable_tqdm=True,
        logging_strategy="no",
        use_cpu=True,
    )
    counter = StepCounter()
    trainer = EnsembleTrainer(
        model_init=model_init_for(cli.pretrained),
        args=args,
        train_dataset=make_image_dataset(cli.num_examples),
        callbacks=[counter],
    )
    output = trainer.train(resume_from_checkpoint=True if cli.save_steps else None)
    result = {"trained": output.trained, "skipped": output.skipped, "steps": counter.steps}
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
