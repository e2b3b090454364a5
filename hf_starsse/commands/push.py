"""`hf-starsse push RUN REPO_ID`: publish a run (soup at the root, members, manifest, eval, card) in one commit."""

from __future__ import annotations

import argparse
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "push",
        help="Publish an evaluated run to the Hugging Face Hub: the soup at the root, members, eval, a model card.",
        description=(
            "Publish an ensemble run folder to the Hub in one commit: the soup that `hf-starsse evaluate` wrote and "
            "evaluated (soups/uniform, BatchNorm recalibrated; --soup greedy for the greedy one) at the repository "
            "root (loadable by pipeline('image-classification', model=REPO_ID)), each member in members/member-<i>/, "
            "the manifest, the evaluation results and plots, and a model card built from them. Only the layout's "
            "files are uploaded; nothing is created on the Hub before the local checks pass."
        ),
    )
    parser.add_argument("run", help="The run folder (with ensemble.json and members/).")
    parser.add_argument("repo_id", metavar="REPO_ID", help="Target repository, e.g. `user/my-starsse-vit`.")
    parser.add_argument(
        "--soup",
        choices=("uniform", "greedy"),
        default="uniform",
        help="The evaluated soup at the repository root (default: uniform; greedy needs `evaluate --soup greedy`).",
    )
    parser.add_argument(
        "--average-members",
        action="store_true",
        help="Publish the plain average of the members at the root instead (e.g. a run never evaluated); its "
        "BatchNorm statistics are averaged, not recalibrated.",
    )
    parser.add_argument("--private", action="store_true", help="Create the repository as private.")
    parser.add_argument("--revision", default=None, help="Branch to push to (created if missing; default main).")
    parser.add_argument(
        "--token", default=None, help="Hub token with write access (default: HF_TOKEN or the saved login)."
    )
    parser.add_argument("--endpoint", default=None, help="Hub URL (default: HF_ENDPOINT or huggingface.co).")
    parser.add_argument("--license", default=None, help="License id for the model card, e.g. apache-2.0.")
    parser.add_argument(
        "--members-separately", action="store_true", help="Also push each member to its own <REPO_ID>-member-<i>."
    )
    parser.add_argument("--commit-message", default=None, help="Commit message.")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..hub import HubPushError, push_to_hub

    try:
        result = push_to_hub(
            args.run,
            args.repo_id,
            soup=args.soup,
            average_members=args.average_members,
            private=args.private,
            revision=args.revision,
            token=args.token,
            endpoint=args.endpoint,
            license=args.license,
            push_members_separately=args.members_separately,
            commit_message=args.commit_message,
        )
    except HubPushError as err:
        print(f"hf-starsse push: error: {err}", file=sys.stderr)
        return 1
    print(f"Pushed {len(result.files)} files to {result.repo_id}@{result.revision}: {result.commit_url}")
    for repo in result.member_repos:
        print(f"Member repository: {repo}")
    return 0
