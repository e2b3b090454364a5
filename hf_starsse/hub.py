"""Publish an ensemble run to the Hugging Face Hub: one repository per run, one atomic commit.

Repository layout:

```
README.md                      # model card (hf_starsse/model_cards/ensemble_card.md)
config.json, model.safetensors # the evaluated soup `soups/uniform/` (or `--soup greedy`), BatchNorm recalibrated:
preprocessor_config.json, ...  #   `AutoModelForImageClassification.from_pretrained(repo)` / `pipeline(...)` load it
soup.json                      #   what made it (members, metrics, evaluation id)
ensemble.json                  # the run's manifest (what `EnsembleForImageClassification.from_pretrained` reads)
members/member-<i>/            # every member: `from_pretrained(repo, subfolder="members/member-<i>")`
eval/eval.json, eval/eval.md, eval/*.png   # the run's evaluation (`hf-starsse evaluate`)
```

What is uploaded is an allow-list of the layout's files (`hf_starsse.push_plan`), checked before anything is sent: a
run never evaluated is refused unless `average_members=True`, and no repository is created before every local check
passed. Nothing is written into the run folder.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from huggingface_hub import CommitOperationAdd, HfApi, get_token
from huggingface_hub.errors import HfHubHTTPError
from safetensors.torch import save_file

from .file_utils import crash_point
from .manifest import EnsembleManifest
from .model_card import SECRET_KEY, build_member_card, build_model_card
from .push_plan import AVERAGE_KIND, SAFE_WEIGHTS_NAME, PushPlan, check_push_arguments, model_files, plan_push
from .run_folder import MANIFEST_NAME, MEMBER_INFO_NAME, RunFolder
from .soups import uniform_soup

logger = logging.getLogger(__name__)

T = TypeVar("T")

TRANSIENT_STATUS = (408, 429, 500, 502, 503, 504)
# Files at most this large are scanned for the token before anything is sent.
SCAN_LIMIT_BYTES = 16 * 1024 * 1024


class HubPushError(RuntimeError):
    """A push that failed; the message is one line and never contains the token."""


@dataclass
class PushResult:
    """What `push_to_hub` published.

    Args:
        repo_id (`str`): The repository (with its namespace).
        revision (`str`): The branch that received the commit.
        commit_oid (`str`): The commit's id.
        commit_url (`str`): The commit's URL.
        files (`list[str]`): Paths in the repository written by the commit.
        member_repos (`list[str]`): The members' own repositories (`push_members_separately=True`).
    """

    repo_id: str
    revision: str
    commit_oid: str
    commit_url: str
    files: list[str] = field(default_factory=list)
    member_repos: list[str] = field(default_factory=list)


def push_to_hub(
    run_dir: str | os.PathLike,
    repo_id: str,
    *,
    soup: str = "uniform",
    average_members: bool = False,
    private: bool = False,
    revision: str | None = None,
    token: str | None = None,
    endpoint: str | None = None,
    commit_message: str | None = None,
    push_members_separately: bool = False,
    license: str | None = None,
    datasets: list[str] | str | None = None,
    base_model: list[str] | str | None = None,
    max_retries: int = 3,
    retry_wait: float = 1.0,
) -> PushResult:
    """Publish the evaluated soup, the members, the manifest, the evaluation results and a model card in one commit.

    Args:
        run_dir (`str` or `os.PathLike`):
            An `hf_starsse` run folder (`ensemble.json` + `members/member-<i>/`), evaluated by `hf-starsse evaluate`.
        repo_id (`str`):
            Target repository, `namespace/name` (or `name`: the token's user namespace). Created when missing, once
            every local check passed.
        soup (`str`, *optional*, defaults to `"uniform"`):
            The evaluated soup published at the repository root: `uniform` (`soups/uniform/`) or `greedy`.
        average_members (`bool`, *optional*, defaults to `False`):
            Publish the plain average of the members at the root instead (e.g. for a run never evaluated). Its
            BatchNorm statistics are the members' average, not recalibrated (a warning says so).
        private (`bool`, *optional*, defaults to `False`):
            Create the repository as private (an existing repository keeps its visibility).
        revision (`str`, *optional*):
            Branch to commit to (created from `main` when missing). Defaults to `main`.
        token (`str`, *optional*):
            A Hub token with write access. Defaults to the locally saved token / `HF_TOKEN`. It is never written or
            logged.
        endpoint (`str`, *optional*):
            Hub URL. Defaults to `HF_ENDPOINT` / `https://huggingface.co`.
        commit_message (`str`, *optional*):
            Defaults to `"Upload <strategy> ensemble (K members, soup, card)"`.
        push_members_separately (`bool`, *optional*, defaults to `False`):
            Also push each member to its own repository `<repo_id>-member-<i>` (one commit each, before the main
            commit) and link them from the card.
        license (`str`, *optional*):
            License id for the card metadata.
        datasets (`list[str]` or `str`, *optional*):
            Hub dataset ids for the card metadata.
        base_model (`list[str]` or `str`, *optional*):
            Hub ids of the pre-trained checkpoints for the card metadata (defaults to the manifest's `base_models`).
        max_retries (`int`, *optional*, defaults to 3):
            Retries of each Hub call on transient failures (HTTP 408/429/5xx, connection errors).
        retry_wait (`float`, *optional*, defaults to 1.0):
            Seconds before the first retry; doubled at each next one.

    Returns:
        [`PushResult`]: the repository, the commit and the files written.

    Raises:
        `FileNotFoundError` / `ValueError`: a bad run folder or argument (before anything is sent).
        [`HubPushError`]: the Hub refused the token or failed after the retries (one line, without the token).
    """
    run = RunFolder(run_dir)
    plan = plan_push(run, soup=soup, average_members=average_members)
    check_push_arguments(repo_id, max_retries, revision)
    branch = revision or "main"
    secret = token if isinstance(token, str) and token else get_token()
    api = HfApi(endpoint=endpoint, token=token, library_name="hf_starsse")
    retry = _Retrier(max_retries, retry_wait, secret, endpoint=api.endpoint)
    manifest = plan.manifest

    with tempfile.TemporaryDirectory(prefix="hf_starsse-push-") as staging_dir:
        staging = Path(staging_dir)
        uploads = list(plan.files)
        if plan.root == AVERAGE_KIND:
            uploads += _stage_members_average(run, plan, staging / "average")
        clean_manifest = _scrub(manifest.to_dict(), secret)
        (staging / MANIFEST_NAME).write_text(json.dumps(clean_manifest, indent=2) + "\n", encoding="utf-8")
        uploads.append((MANIFEST_NAME, staging / MANIFEST_NAME))
        if "/" not in repo_id:  # the card names the full repository: ask who the token belongs to (creates nothing)
            repo_id = f"{retry(lambda: api.whoami(), 'read the token owner')['name']}/{repo_id}"
        member_repos = [f"{repo_id}-member-{r.index}" for r in manifest.members] if push_members_separately else []
        card = build_model_card(
            EnsembleManifest.from_dict(clean_manifest),
            repo_id=repo_id,
            eval_results=plan.eval_results,
            root=plan.root,
            plots=plan.plots,
            license=license,
            datasets=datasets,
            base_model=base_model,
            member_repos=member_repos or None,
            endpoint=api.endpoint,
        )
        (staging / "README.md").write_text(str(card), encoding="utf-8")
        uploads.append(("README.md", staging / "README.md"))
        _check_no_secret(uploads, secret)
        crash_point("push_staged")  # test hook: everything checked and staged, nothing sent yet

        # From here on, the Hub. The repository and branch are created first (a refused token stops here).
        retry(lambda: api.create_repo(repo_id, private=private, exist_ok=True), f"create {repo_id}")
        if branch != "main":
            retry(lambda: api.create_branch(repo_id, branch=branch, exist_ok=True), f"create branch {branch}")
        for record, folder, member_repo in zip(manifest.members, plan.member_dirs, member_repos):
            _push_member(api, retry, manifest, record.index, run, folder, member_repo, repo_id, private, license)
        message = commit_message or (
            f"Upload {manifest.strategy} ensemble ({len(manifest.members)} members, {plan.root} soup, card) "
            "with hf_starsse"
        )
        commit = retry(
            lambda: api.create_commit(
                repo_id,
                operations=[CommitOperationAdd(path_in_repo=p, path_or_fileobj=str(f)) for p, f in uploads],
                commit_message=message,
                revision=branch,
            ),
            f"commit to {repo_id}@{branch}",
        )
    logger.info("Pushed %d files to %s@%s (commit %s).", len(uploads), repo_id, branch, commit.oid)
    return PushResult(
        repo_id=repo_id,
        revision=branch,
        commit_oid=commit.oid,
        commit_url=commit.commit_url,
        files=sorted(p for p, _ in uploads),
        member_repos=member_repos,
    )


def push_run_if_requested(args: Any, run_dir: str | os.PathLike | None = None) -> PushResult | None:
    """Honour `TrainingArguments.push_to_hub` at the end of an ensemble run: push the run's layout.

    Uses `hub_model_id` (default: the output folder's name), `hub_token`, `hub_private_repo` and `hub_revision`
    when the arguments have them. Only the process that saves (`args.should_save`) pushes. A run not evaluated yet
    (the usual case at the end of training) is pushed with `average_members=True`, with a warning.

    Args:
        args (`TrainingArguments`):
            The run's arguments.
        run_dir (`str` or `os.PathLike`, *optional*):
            The run folder; defaults to `args.output_dir`.

    Returns:
        [`PushResult`] or `None` when no push was requested (or this process does not save).
    """
    if not getattr(args, "push_to_hub", False) or not getattr(args, "should_save", True):
        return None
    run_dir = Path(run_dir if run_dir is not None else args.output_dir)
    repo_id = getattr(args, "hub_model_id", None) or run_dir.resolve().name
    evaluated = RunFolder(run_dir).eval_json.is_file()
    if not evaluated:
        logger.warning(
            "The run is pushed at the end of training, before any `hf-starsse evaluate`: the repository root gets the "
            "plain average of the members. Evaluate and push again to publish the BatchNorm-recalibrated soup."
        )
    return push_to_hub(
        run_dir,
        repo_id,
        average_members=not evaluated,
        private=bool(getattr(args, "hub_private_repo", False)),
        revision=getattr(args, "hub_revision", None),
        token=getattr(args, "hub_token", None),
    )


# ---- staging ------------------------------------------------------------------------------------------------------


def _stage_members_average(run: RunFolder, plan: PushPlan, staging: Path) -> list[tuple[str, Path]]:
    """The plain average of the members for the repository root (config and processor files of member 0)."""
    staging.mkdir(parents=True)
    state = uniform_soup(plan.member_dirs)
    if any(k.endswith(("running_mean", "running_var")) for k in state):
        logger.warning(
            "The published soup's BatchNorm statistics are the average of the members' (`average_members`), not "
            "recalibrated: run `hf-starsse evaluate %s` and push its soup for a better model.",
            run.root,
        )
    save_file(
        {k: v.contiguous() for k, v in state.items()}, str(staging / SAFE_WEIGHTS_NAME), metadata={"format": "pt"}
    )
    uploads = [(SAFE_WEIGHTS_NAME, staging / SAFE_WEIGHTS_NAME)]
    for path in model_files(run, plan.member_dirs[0], "member 0 file"):
        if path.name != SAFE_WEIGHTS_NAME and not path.name.startswith("model") and path.name != MEMBER_INFO_NAME:
            uploads.append((path.name, path))
    return uploads


def _push_member(
    api: HfApi,
    retry: _Retrier,
    manifest: EnsembleManifest,
    index: int,
    run: RunFolder,
    folder: Path,
    member_repo: str,
    ensemble_repo: str,
    private: bool,
    license: str | None,
) -> None:
    retry(lambda: api.create_repo(member_repo, private=private, exist_ok=True), f"create {member_repo}")
    card = build_member_card(
        manifest, index, repo_id=member_repo, ensemble_repo=ensemble_repo, license=license, endpoint=api.endpoint
    )
    operations = [
        CommitOperationAdd(path_in_repo=f.name, path_or_fileobj=str(f))
        for f in model_files(run, folder, f"member {index} file")
    ]
    operations.append(CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=str(card).encode()))
    retry(
        lambda: api.create_commit(
            member_repo, operations=operations, commit_message=f"Upload member {index} of {ensemble_repo}"
        ),
        f"commit to {member_repo}",
    )


# ---- secrets ------------------------------------------------------------------------------------------------------


def _scrub(data: Any, secret: str | None) -> Any:
    """Drop token-like keys and mask any occurrence of the token in the values."""
    if isinstance(data, dict):
        return {k: _scrub(v, secret) for k, v in data.items() if not SECRET_KEY.search(str(k))}
    if isinstance(data, list):
        return [_scrub(v, secret) for v in data]
    if isinstance(data, str) and secret and secret in data:
        return data.replace(secret, "***")
    return data


def _check_no_secret(uploads: list[tuple[str, Path]], secret: str | None) -> None:
    if not secret:
        return
    needle = secret.encode()
    for path_in_repo, local in uploads:
        if local.stat().st_size <= SCAN_LIMIT_BYTES and needle in local.read_bytes():
            raise HubPushError(
                f"Refusing to push: {local} (to be uploaded as {path_in_repo}) contains your Hub token. Remove it "
                "from the file and push again; nothing was sent."
            )


# ---- retries and errors -------------------------------------------------------------------------------------------


def _transport_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for module in ("httpx2", "httpx"):
        try:
            errors.append(__import__(module).TransportError)
        except (ImportError, AttributeError):
            pass
    return tuple(errors)


def _one_line(text: str) -> str:
    return " ".join(text.split())


class _Retrier:
    """Call a Hub operation, retrying transient failures; turn failures into one-line `HubPushError`s."""

    def __init__(self, max_retries: int, wait: float, secret: str | None, endpoint: str):
        self.max_retries = max_retries
        self.wait = wait
        self.secret = secret
        self.endpoint = endpoint.rstrip("/")
        self.transport_errors = _transport_errors()

    def _redact(self, text: str) -> str:
        return text.replace(self.secret, "***") if self.secret else text

    def __call__(self, fn: Callable[[], T], what: str) -> T:
        wait = self.wait
        for attempt in range(self.max_retries + 1):
            try:
                return fn()
            except HfHubHTTPError as err:
                status = err.response.status_code if err.response is not None else None
                if status in (401, 403):
                    raise HubPushError(
                        f"Authentication failed (HTTP {status}) on {self.endpoint} while trying to {what}: the Hub "
                        "refused the token. Pass a token with write access (`token=` / `--token`, `HF_TOKEN` or "
                        "`hf auth login`); the ensemble commit was not made."
                    ) from None
                if status not in TRANSIENT_STATUS or attempt == self.max_retries:
                    server = _one_line(err.server_message or "") if getattr(err, "server_message", None) else ""
                    raise HubPushError(
                        self._redact(
                            f"Could not {what} on {self.endpoint}: HTTP {status}"
                            + (f" ({server})" if server else "")
                            + (f" after {attempt + 1} attempts" if attempt else "")
                            + ". The local run folder was not modified."
                        )
                    ) from None
                reason = f"HTTP {status}"
            except self.transport_errors as err:
                if attempt == self.max_retries:
                    raise HubPushError(
                        self._redact(
                            f"Could not {what} on {self.endpoint}: {type(err).__name__} after {attempt + 1} attempts. "
                            "The local run folder was not modified."
                        )
                    ) from None
                reason = type(err).__name__
            logger.warning("Could not %s (%s); retrying in %.1fs.", what, reason, wait)
            time.sleep(wait)
            wait *= 2
        raise AssertionError("unreachable")


__all__ = ["HubPushError", "PushResult", "push_run_if_requested", "push_to_hub"]
