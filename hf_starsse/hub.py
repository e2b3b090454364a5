"""Publish an ensemble run to the Hugging Face Hub: one repository per run, one atomic commit.

Repository layout:

```
README.md                      # model card (hf_starsse/model_cards/ensemble_card.md)
config.json, model.safetensors # the uniform soup: `AutoModelForImageClassification.from_pretrained(repo)` and
preprocessor_config.json, ...  #   `pipeline("image-classification", model=repo)` load it
ensemble.json                  # the run's manifest (what `EnsembleForImageClassification.from_pretrained` reads)
members/member-<i>/            # every member: `from_pretrained(repo, subfolder="members/member-<i>")`
eval.json, eval/..., plots/... # the run's evaluation results and plots, when present
```

The soup is the run's `soup/` folder when the evaluation wrote one (e.g. with BatchNorm statistics recalibrated on
training data), else the uniform average of the members computed here. Nothing is written into the run folder.
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
from huggingface_hub.errors import HfHubHTTPError, HFValidationError
from huggingface_hub.utils import validate_repo_id
from safetensors.torch import save_file

from .manifest import MANIFEST_NAME, MEMBER_INFO_NAME, EnsembleManifest
from .model_card import SECRET_KEY, build_member_card, build_model_card
from .soups import SAFE_WEIGHTS_NAME, uniform_soup

logger = logging.getLogger(__name__)

T = TypeVar("T")

SOUP_DIR = "soup"
EVAL_FILES = ("eval.json", "eval.md")
EVAL_DIRS = ("eval",)
PLOT_DIRS = ("plots",)
PLOT_SUFFIXES = (".png", ".svg", ".pdf", ".jpg", ".jpeg")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")
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
    repo_url: str = ""
    num_bytes: int = 0


def push_to_hub(
    run_dir: str | os.PathLike,
    repo_id: str,
    *,
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
    """Publish the soup, the members, the manifest, the evaluation results and a model card in one commit.

    Args:
        run_dir (`str` or `os.PathLike`):
            An `hf_starsse` run folder (`ensemble.json` + `members/member-<i>/`).
        repo_id (`str`):
            Target repository, `namespace/name` (or `name`: the token's user namespace). Created when missing.
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
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"`run_dir` {run_dir} is not a folder.")
    manifest = EnsembleManifest.load(run_dir)
    if not manifest.members:
        raise ValueError(f"The manifest {run_dir / MANIFEST_NAME} lists no finished member: nothing to push.")
    member_dirs = manifest.member_paths(run_dir)
    for record, folder in zip(manifest.members, member_dirs):
        for name in ("config.json", SAFE_WEIGHTS_NAME):
            if not (folder / name).is_file():
                raise FileNotFoundError(f"Member {record.index} has no {name} in {folder}.")
    if not isinstance(repo_id, str) or not repo_id:
        raise ValueError(f"`repo_id` should be a repository id like `user/name`, got {repo_id!r}.")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise ValueError(f"`repo_id` {repo_id!r} is not a valid repository id: {_one_line(str(err))}") from None
    if max_retries < 0:
        raise ValueError(f"`max_retries` should be >= 0, got {max_retries}.")
    if revision is not None and (not isinstance(revision, str) or not revision.strip()):
        raise ValueError(f"`revision` should be a branch name, got {revision!r}.")
    branch = revision or "main"
    secret = token if isinstance(token, str) and token else get_token()
    api = HfApi(endpoint=endpoint, token=token, library_name="hf_starsse")
    retry = _Retrier(max_retries, retry_wait, secret, endpoint=api.endpoint)

    with tempfile.TemporaryDirectory(prefix="hf_starsse-push-") as staging_dir:
        staging = Path(staging_dir)
        uploads = _stage_soup(run_dir, member_dirs, staging / "soup")
        uploads += _member_uploads(manifest, run_dir)
        uploads += _eval_uploads(run_dir)
        clean_manifest = _scrub(manifest.to_dict(), secret)
        (staging / MANIFEST_NAME).write_text(json.dumps(clean_manifest, indent=2) + "\n", encoding="utf-8")
        uploads.append((MANIFEST_NAME, staging / MANIFEST_NAME))
        eval_results = _read_json(run_dir / "eval.json")
        plots = [path for path, _ in uploads if path.lower().endswith(PLOT_SUFFIXES)]
        _check_no_secret(uploads, secret)

        # From here on, the Hub. The repository and branch are created first (a refused token stops here).
        repo_url = retry(lambda: api.create_repo(repo_id, private=private, exist_ok=True), f"create {repo_id}")
        repo_id = getattr(repo_url, "repo_id", None) or repo_id
        if branch != "main":
            retry(lambda: api.create_branch(repo_id, branch=branch, exist_ok=True), f"create branch {branch}")

        member_repos = []
        if push_members_separately:
            for record, folder in zip(manifest.members, member_dirs):
                member_repos.append(
                    _push_member(api, retry, manifest, record.index, folder, repo_id, private, license, staging)
                )

        card = build_model_card(
            EnsembleManifest.from_dict(clean_manifest),
            repo_id=repo_id,
            eval_results=eval_results,
            plots=plots,
            license=license,
            datasets=datasets,
            base_model=base_model,
            member_repos=member_repos or None,
            endpoint=api.endpoint,
        )
        (staging / "README.md").write_text(str(card), encoding="utf-8")
        uploads.append(("README.md", staging / "README.md"))
        _check_no_secret(uploads[-1:], secret)

        message = commit_message or (
            f"Upload {manifest.strategy} ensemble ({len(manifest.members)} members, soup, card) with hf_starsse"
        )
        num_bytes = announce_upload(uploads, repo_id, branch)
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
        repo_url=f"{api.endpoint.rstrip('/')}/{repo_id}" + (f"/tree/{branch}" if branch != "main" else ""),
        num_bytes=num_bytes,
    )


def _format_bytes(num: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if num < 1024 or unit == "GB":
            return f"{num:.0f} {unit}" if unit == "B" else f"{num:.1f} {unit}"
        num /= 1024
    return f"{num:.1f} GB"


def announce_upload(uploads: list[tuple[str, Path]], repo_id: str, branch: str) -> int:
    """Print what one commit uploads: totals, then one line per top-level entry (a member folder counts as one).

    Returns:
        `int`: the bytes uploaded.
    """
    groups: dict[str, list[int]] = {}
    for path_in_repo, local in uploads:
        parts = path_in_repo.split("/")
        depth = 2 if parts[0] == "members" else 1
        key = "/".join(parts[:depth]) + "/" if len(parts) > depth else path_in_repo
        groups.setdefault(key, []).append(local.stat().st_size)
    total = sum(sum(sizes) for sizes in groups.values())
    print(f"[hf_starsse] uploading {len(uploads)} files ({_format_bytes(total)}) to {repo_id}@{branch}:", flush=True)
    for key in sorted(groups):
        sizes = groups[key]
        files = f"{len(sizes)} files, " if len(sizes) > 1 else ""
        print(f"    {key:<40} {files}{_format_bytes(sum(sizes))}", flush=True)
    return total


def push_run_if_requested(args: Any, run_dir: str | os.PathLike | None = None) -> PushResult | None:
    """Honour `TrainingArguments.push_to_hub` at the end of an ensemble run: push the run's layout.

    Uses `hub_model_id` (default: the output folder's name), `hub_token`, `hub_private_repo` and `hub_revision`
    when the arguments have them. Only the process that saves (`args.should_save`) pushes.

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
    result = push_to_hub(
        run_dir,
        repo_id,
        private=bool(getattr(args, "hub_private_repo", False)),
        revision=getattr(args, "hub_revision", None),
        token=getattr(args, "hub_token", None),
    )
    print(f"[hf_starsse] pushed the run ({len(result.files)} files) to {result.repo_url}", flush=True)
    return result


# ---- staging ------------------------------------------------------------------------------------------------------


def _stage_soup(run_dir: Path, member_dirs: list[Path], staging: Path) -> list[tuple[str, Path]]:
    """The soup's files for the repository root: the run's `soup/` folder, or a uniform soup computed here (its
    config and image processor are member 0's)."""
    saved = run_dir / SOUP_DIR
    if (saved / SAFE_WEIGHTS_NAME).is_file() and (saved / "config.json").is_file():
        return [(f.name, f) for f in sorted(saved.iterdir()) if _is_upload(f)]
    staging.mkdir(parents=True)
    state = uniform_soup(member_dirs)
    if any(k.endswith(("running_mean", "running_var")) for k in state):
        logger.warning(
            "The soup's BatchNorm statistics are the average of the members' (no recalibrated `%s/` folder in the "
            "run): recalibrate them on training data for a better soup.",
            SOUP_DIR,
        )
    save_file(
        {k: v.contiguous() for k, v in state.items()}, str(staging / SAFE_WEIGHTS_NAME), metadata={"format": "pt"}
    )
    uploads = [(SAFE_WEIGHTS_NAME, staging / SAFE_WEIGHTS_NAME)]
    for f in sorted(member_dirs[0].iterdir()):
        if _is_upload(f) and f.name != MEMBER_INFO_NAME and not f.name.endswith(WEIGHT_SUFFIXES + (".index.json",)):
            uploads.append((f.name, f))
    return uploads


def _member_uploads(manifest: EnsembleManifest, run_dir: Path) -> list[tuple[str, Path]]:
    uploads = []
    for record in manifest.members:
        folder = run_dir / record.path
        prefix = Path(record.path).as_posix().strip("/")
        for f in sorted(folder.rglob("*")):
            if _is_upload(f) and not any(part.startswith(".") for part in f.relative_to(folder).parts):
                uploads.append((f"{prefix}/{f.relative_to(folder).as_posix()}", f))
    return uploads


def _eval_uploads(run_dir: Path) -> list[tuple[str, Path]]:
    uploads = [(name, run_dir / name) for name in EVAL_FILES if (run_dir / name).is_file()]
    uploads += [(f.name, f) for f in sorted(run_dir.glob("*")) if f.is_file() and f.suffix.lower() in PLOT_SUFFIXES]
    for folder in EVAL_DIRS + PLOT_DIRS:
        for f in sorted((run_dir / folder).rglob("*")) if (run_dir / folder).is_dir() else []:
            rel = f.relative_to(run_dir)
            if _is_upload(f) and not any(part.startswith(".") for part in rel.parts):
                if folder in PLOT_DIRS and f.suffix.lower() not in PLOT_SUFFIXES:
                    continue
                uploads.append((rel.as_posix(), f))
    return uploads


def _is_upload(path: Path) -> bool:
    return path.is_file() and not path.name.startswith(".") and not path.name.endswith(".tmp")


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"The evaluation results {path} are not valid JSON: {err}") from None
    return data if isinstance(data, dict) else None


def _push_member(
    api: HfApi,
    retry: _Retrier,
    manifest: EnsembleManifest,
    index: int,
    folder: Path,
    ensemble_repo: str,
    private: bool,
    license: str | None,
    staging: Path,
) -> str:
    name = f"{ensemble_repo}-member-{index}"
    repo_url = retry(lambda: api.create_repo(name, private=private, exist_ok=True), f"create {name}")
    member_repo = getattr(repo_url, "repo_id", None) or name
    card = build_member_card(
        manifest, index, repo_id=member_repo, ensemble_repo=ensemble_repo, license=license, endpoint=api.endpoint
    )
    card_path = staging / f"member-{index}-README.md"
    card_path.write_text(str(card), encoding="utf-8")
    uploads = [(f.relative_to(folder).as_posix(), f) for f in sorted(folder.rglob("*")) if _is_upload(f)]
    uploads.append(("README.md", card_path))
    retry(
        lambda: api.create_commit(
            member_repo,
            operations=[CommitOperationAdd(path_in_repo=p, path_or_fileobj=str(f)) for p, f in uploads],
            commit_message=f"Upload member {index} of {ensemble_repo}",
        ),
        f"commit to {member_repo}",
    )
    return member_repo


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
