"""`hf-starsse evaluate RUN`: members, ensemble, soups, basin and OOD of a run, as eval.json + markdown + PNGs."""

from __future__ import annotations

import argparse
from pathlib import Path

EPILOG = """\
Evaluation data: `--dataset PATH` (a `datasets` folder written by `save_to_disk`) with `--split`, or by default the
run's own `RUN/eval_data/` (a DatasetDict with `validation` and `test` splits holding `pixel_values` and `labels`).
Raw image datasets (an image column) are processed with the members' image processor.

Cost: every model runs once per dataset; its class probabilities are cached in RUN/predictions/ (keyed by a hash
of its weights and of the data), so repeating an evaluation, or adding an option, only computes what is new. The
plan (forward passes still to do, what is cached) and an estimate from the first batches are printed first.
`--ood` uses a seeded random subset of the test split by default (--ood-max-samples).

Examples:
  hf-starsse evaluate runs/star_sse
  hf-starsse evaluate runs/star_sse --soup greedy --ood --corruptions gaussian_noise fog --severities 1 3 5
  hf-starsse evaluate runs/star_sse --dataset data/cifar10_saved --split test --max_samples 2000
"""


DEFAULT_OOD_SAMPLES = 200  # = hf_starsse.ood.DEFAULT_OOD_SAMPLES (not imported: `--help` stays light)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="Evaluate a run: members, ensemble, soups, OOD, basin; writes eval.json, eval.md and plots.",
        description="Evaluate the members of a run, their ensemble (mean of softmax probabilities) and their soups.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("run", help="The run folder (holds ensemble.json and members/).")
    parser.add_argument("--dataset", default=None, help="A `save_to_disk` dataset folder (default: RUN/eval_data).")
    parser.add_argument("--split", default="test", help="Split to evaluate (default: test).")
    parser.add_argument(
        "--validation-split", default="validation", help="Held-out split for the greedy soup (default: validation)."
    )
    parser.add_argument(
        "--bn-split",
        default=None,
        help="Split used to recalibrate the soups' BatchNorm (default: train if present, else the validation split).",
    )
    parser.add_argument(
        "--soup",
        choices=("uniform", "greedy", "none"),
        default="uniform",
        help="Soup to build, evaluate and save in RUN/soups/ (greedy also builds the uniform one; default: uniform).",
    )
    parser.add_argument("--ood", action="store_true", help="Also evaluate on corrupted test data (imagecorruptions).")
    parser.add_argument("--corruptions", nargs="+", default=None, help="OOD corruptions (default: all 19).")
    parser.add_argument("--severities", nargs="+", type=int, default=None, help="OOD severities (default: 1 2 3 4 5).")
    parser.add_argument(
        "--ood-max-samples",
        type=int,
        default=DEFAULT_OOD_SAMPLES,
        help=f"OOD uses a seeded random subset of this many test images (default: {DEFAULT_OOD_SAMPLES}; 0: all).",
    )
    parser.add_argument(
        "--interpolation-points",
        type=int,
        default=5,
        help="Points on the line between two members, end points (the members: free) included (default: 5; 0 skips).",
    )
    parser.add_argument(
        "--interpolate", nargs=2, type=int, default=(0, 1), metavar=("A", "B"), help="Members of the line (0 1)."
    )
    parser.add_argument(
        "--plane-grid", type=int, default=0, help="Grid size of the plane through members 0-2 (0 skips)."
    )
    parser.add_argument("--batch-size", type=int, default=64, help="Evaluation batch size (default: 64).")
    parser.add_argument("--max-samples", type=int, default=None, help="Use only the first N samples of each split.")
    parser.add_argument("--num-bins", type=int, default=15, help="ECE bins (default: 15).")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda when available).")
    parser.add_argument("--output-dir", default=None, help="Where the report goes (default: RUN/eval).")
    parser.add_argument("--no-plots", action="store_true", help="Skip the PNG plots.")
    parser.add_argument("--no-progress", action="store_true", help="Hide progress bars.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the OOD corruptions (default: 0).")
    parser.add_argument("--traceback", action="store_true", help="Show the full traceback on errors.")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..run_evaluation import EvaluationSettings, evaluate_run

    settings = EvaluationSettings(
        dataset=args.dataset,
        split=args.split,
        validation_split=args.validation_split,
        bn_split=args.bn_split,
        soup=args.soup,
        ood=args.ood,
        corruptions=args.corruptions,
        severities=args.severities,
        ood_max_samples=args.ood_max_samples,
        interpolation_points=args.interpolation_points,
        interpolate=tuple(args.interpolate),
        plane_grid=args.plane_grid,
        batch_size=args.batch_size,
        max_samples=args.max_samples,
        num_bins=args.num_bins,
        device=args.device,
        output_dir=args.output_dir,
        plots=not args.no_plots,
        progress=not args.no_progress,
        seed=args.seed,
    )
    results = evaluate_run(args.run, settings)
    markdown = Path(results["written"]["markdown"])
    print(markdown.read_text(encoding="utf-8"))
    print("Wrote " + ", ".join(str(Path(p)) for p in results["written"].values()))
    return 0
