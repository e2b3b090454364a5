"""`hf-starsse sweep`: the paper's grid (SSE / StarSSE cycle LR and length ratios against Local DE) over seeds."""

from __future__ import annotations

import argparse
import shlex
import sys

# spelled here so that `--help` imports no torch (tests/test_cli.py checks them against hf_starsse.sweep_presets)
PRESET_NAMES = ("cpu-digits", "gpu-digits")
METHODS = ("local_de", "sse", "star_sse")
# `SweepConfig`'s defaults quoted in the help (tests/test_cli.py checks them)
DEFAULTS = {"num_seeds": 3, "num_members": 5, "eval_batch_size": 256, "bootstrap_samples": 2000, "confidence": 0.95}


def _ratios(text: str) -> list[float]:
    try:
        return [float(x) for x in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"should be numbers, got {text!r}") from None


def _shard(text: str) -> tuple[int, int]:
    index, sep, count = text.partition("/")
    try:
        shard = (int(index), int(count))
    except ValueError:
        raise argparse.ArgumentTypeError(f"should be `I/N` (e.g. 0/4), got {text!r}") from None
    if not sep or not 0 <= shard[0] < shard[1]:
        raise argparse.ArgumentTypeError(f"should be `I/N` with 0 <= I < N, got {text!r}")
    return shard


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "sweep",
        help="Train and evaluate SSE / StarSSE over cycle LR and length ratios against Local DE, over seeds.",
        description="Per seed, member 0 is fine-tuned once and every SSE / StarSSE configuration starts from it. "
        "Every configuration is an ordinary run folder under OUTPUT_DIR/runs/; the same command resumes a killed "
        "sweep. Writes sweep.md, sweep.json and figures/*.png (mean ± std over seeds, paired differences with "
        "confidence intervals over seeds and over test examples).",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", help="Training recipe (YAML / JSON of `hf-starsse train` fields).")
    source.add_argument("--preset", choices=PRESET_NAMES, help="A ready-made offline sweep (see the README).")
    parser.add_argument("--output-dir", help="Sweep folder (default: the recipe's output_dir + `_sweep`).")
    parser.add_argument("--lr-ratios", type=_ratios, help="Cycle LR ratios, e.g. `0.25,1,4` (default: the paper's).")
    parser.add_argument("--epoch-ratios", type=_ratios, help="Cycle length ratios (default: the paper's 0.5,1,2,4).")
    parser.add_argument("--methods", help=f"Comma-separated, among {','.join(METHODS)} (default: all three).")
    d = DEFAULTS
    parser.add_argument("--seeds", type=int, dest="num_seeds", help=f"Number of seeds (default {d['num_seeds']}).")
    parser.add_argument("--num-members", type=int, help=f"Ensemble size K (default {d['num_members']}).")
    parser.add_argument("--eval-batch-size", type=int, help=f"Evaluation batch (default {d['eval_batch_size']}).")
    parser.add_argument("--bootstrap-samples", type=int, help=f"Resamples (default {d['bootstrap_samples']}).")
    parser.add_argument("--confidence", type=float, help=f"Level of the intervals (default {d['confidence']}).")
    parser.add_argument("--device", help="Device of the evaluation passes (default: CUDA when available).")
    parser.add_argument("--no-plots", action="store_true", help="Skip the PNG figures.")
    parser.add_argument(
        "--stage",
        choices=("all", "first", "cycles"),
        default="all",
        help="first: only the runs that train member 0 (one per seed); cycles: only SSE / StarSSE runs (member 0 "
        "done); all (default).",
    )
    parser.add_argument(
        "--shard", type=_shard, default=(0, 1), help="`I/N`: take every N-th run of the stage from the I-th (jobs)."
    )
    parser.add_argument("--dry-run", action="store_true", help="Print the runs and exit.")
    parser.set_defaults(func=run)


def build_config(args: argparse.Namespace, build_assets: bool = True):
    """The `SweepConfig` of the command line: the preset's or the recipe's values, then the flags given."""
    from ..sweep_config import SweepConfig

    if args.preset:
        from ..sweep_presets import preset_config_fields

        output_dir = args.output_dir or f"hf_starsse_sweep_{args.preset}"
        fields = preset_config_fields(args.preset, output_dir, build=build_assets)
    else:
        from ..train_entry import load_recipe

        recipe = load_recipe(args.config)
        output_dir = args.output_dir or f"{recipe.get('output_dir', 'hf_starsse')}_sweep"
        fields = {"recipe": recipe}
    for name in ("lr_ratios", "epoch_ratios", "num_seeds", "num_members", "eval_batch_size", "bootstrap_samples"):
        if getattr(args, name) is not None:
            fields[name] = getattr(args, name)
    for name in ("confidence", "device"):
        if getattr(args, name) is not None:
            fields[name] = getattr(args, name)
    if args.methods is not None:
        fields["methods"] = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    return SweepConfig(output_dir=output_dir, plots=not args.no_plots, **fields)


def run(args: argparse.Namespace) -> int:
    from ..sweep import run_sweep, select_runs
    from ..sweep_folder import SweepFolder, plan_sweep

    config = build_config(args, build_assets=not args.dry_run)
    if config.overridden:
        print(f"[sweep] set per run, taken out of the recipe: {', '.join(config.overridden)}", flush=True)
    if args.dry_run:
        folder = SweepFolder(config.output_dir)
        for run_, first in select_runs(plan_sweep(config), args.stage, args.shard):
            start = f" (member 0 from {first.name})" if first is not None else ""
            print(f"{folder.run_dir(run_)}: {run_.num_members} member(s){start}")
        return 0
    command = "hf-starsse " + shlex.join(getattr(args, "command_line", None) or sys.argv[1:])
    run_sweep(config, command=command, stage=args.stage, shard=args.shard)
    return 0
