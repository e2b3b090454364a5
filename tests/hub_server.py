"""A small Hub-compatible HTTP server for tests (stdlib only): repos stored on disk, real `huggingface_hub` client.

It answers the endpoints that `huggingface_hub` (2.x) and `transformers` call to create a repo, commit files
(preupload answers `"regular"` for every file, so contents travel base64-encoded inside the NDJSON commit), list and
download them:

- `GET  /api/whoami-v2`
- `POST /api/repos/create`, `POST /api/repos/delete`, `POST /api/validate-yaml`
- `GET  /api/{type}s/{ns}/{name}` and `.../revision/{rev}` (repo info with siblings)
- `POST /api/{type}s/{ns}/{name}/preupload/{rev}`, `POST .../commit/{rev}` (NDJSON)
- `GET  /api/{type}s/{ns}/{name}/tree/{rev}[/{path}]`, `POST .../paths-info/{rev}`, `GET .../refs`,
  `GET .../commits/{rev}`, `POST .../branch/{branch}`
- `HEAD|GET /{ns}/{name}/resolve/{rev}/{path}` (and `/datasets/...`, `/spaces/...`)

Authentication is checked like the Hub does it: a `Bearer` token that the server does not know gets a 401 on every
route; writes need a known token whose user owns the namespace; private repos are only visible to their owner.
Switches for failure tests: `fail_next_commits` (the next N commits read their whole payload, then answer 500
without moving the branch) and `drop_next_commits` (close the connection without an answer).

The server never logs request headers, so tokens do not end up in its request log.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

REPO_TYPES = ("model", "dataset", "space")
URL_PREFIXES = {"dataset": "datasets/", "space": "spaces/", "model": ""}
INVALID_CREDENTIALS = "Invalid credentials in Authorization header"


class HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a blob (what the Hub reports as `oid` / `ETag` of a regular file)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


class RepoStore:
    """Repos on disk: `<root>/<type>s/<ns>/<name>/{meta.json, refs.json, commits/<sha>.json, objects/<oid>}`.

    A commit is a JSON file mapping every path to a blob oid; moving a branch is one atomic `os.replace` of
    `refs.json`, so a failed commit never leaves a half-updated branch.
    """

    def __init__(self, root: Path):
        self.root = Path(root)
        self.lock = threading.RLock()

    def repo_dir(self, repo_type: str, repo_id: str) -> Path:
        return self.root / f"{repo_type}s" / repo_id

    def exists(self, repo_type: str, repo_id: str) -> bool:
        return (self.repo_dir(repo_type, repo_id) / "meta.json").is_file()

    def meta(self, repo_type: str, repo_id: str) -> dict[str, Any]:
        path = self.repo_dir(repo_type, repo_id) / "meta.json"
        if not path.is_file():
            raise HubError(404, "Repository not found", "RepoNotFound")
        return json.loads(path.read_text())

    def refs(self, repo_type: str, repo_id: str) -> dict[str, str]:
        return json.loads((self.repo_dir(repo_type, repo_id) / "refs.json").read_text())

    def commit(self, repo_type: str, repo_id: str, sha: str) -> dict[str, Any]:
        return json.loads((self.repo_dir(repo_type, repo_id) / "commits" / f"{sha}.json").read_text())

    def resolve(self, repo_type: str, repo_id: str, revision: str) -> str:
        refs = self.refs(repo_type, repo_id)
        revision = revision.removeprefix("refs/heads/")
        if revision in refs:
            return refs[revision]
        commits = self.repo_dir(repo_type, repo_id) / "commits"
        if len(revision) >= 7 and all(c in "0123456789abcdef" for c in revision):
            matches = [p.stem for p in commits.glob(f"{revision}*.json")]
            if len(matches) == 1:
                return matches[0]
        raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")

    def tree(self, repo_type: str, repo_id: str, revision: str) -> tuple[str, dict[str, str]]:
        sha = self.resolve(repo_type, repo_id, revision)
        return sha, self.commit(repo_type, repo_id, sha)["files"]

    def read_object(self, repo_type: str, repo_id: str, oid: str) -> bytes:
        return (self.repo_dir(repo_type, repo_id) / "objects" / oid).read_bytes()

    def object_size(self, repo_type: str, repo_id: str, oid: str) -> int:
        return (self.repo_dir(repo_type, repo_id) / "objects" / oid).stat().st_size

    def create(self, repo_type: str, repo_id: str, owner: str, private: bool) -> None:
        with self.lock:
            if self.exists(repo_type, repo_id):
                raise HubError(409, f"You already created this {repo_type} repo", None)
            folder = self.repo_dir(repo_type, repo_id)
            shutil.rmtree(folder, ignore_errors=True)
            (folder / "commits").mkdir(parents=True)
            (folder / "objects").mkdir()
            _atomic_write(folder / "refs.json", b"{}")
            sha = self._write_commit(
                repo_type,
                repo_id,
                None,
                "initial commit",
                "",
                {".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"},
                {},
            )
            _atomic_write(folder / "refs.json", json.dumps({"main": sha}).encode())
            meta = {"owner": owner, "private": private, "created": time.time(), "type": repo_type}
            _atomic_write(folder / "meta.json", json.dumps(meta).encode())

    def delete(self, repo_type: str, repo_id: str) -> None:
        with self.lock:
            self.meta(repo_type, repo_id)
            shutil.rmtree(self.repo_dir(repo_type, repo_id))

    def _write_commit(
        self,
        repo_type: str,
        repo_id: str,
        parent: str | None,
        summary: str,
        description: str,
        new_files: dict[str, bytes],
        base: dict[str, str],
    ) -> str:
        folder = self.repo_dir(repo_type, repo_id)
        files = dict(base)
        for path, data in new_files.items():
            oid = git_blob_sha1(data)
            obj = folder / "objects" / oid
            if not obj.exists():
                _atomic_write(obj, data)
            files[path] = oid
        body = {"parent": parent, "summary": summary, "description": description, "files": files, "time": time.time()}
        sha = hashlib.sha1(json.dumps(body, sort_keys=True).encode() + uuid.uuid4().bytes).hexdigest()
        body["id"] = sha
        _atomic_write(folder / "commits" / f"{sha}.json", json.dumps(body).encode())
        return sha

    def apply_commit(
        self,
        repo_type: str,
        repo_id: str,
        branch: str,
        header: dict[str, Any],
        operations: list[tuple[str, dict[str, Any]]],
        fail: bool = False,
    ) -> str:
        """Apply NDJSON operations on `branch`; with `fail`, store the blobs but raise before moving the branch."""
        with self.lock:
            refs = self.refs(repo_type, repo_id)
            if branch not in refs:
                raise HubError(404, f"Invalid rev id: {branch}", "RevisionNotFound")
            parent = refs[branch]
            expected = header.get("parentCommit")
            if expected and not parent.startswith(expected):
                raise HubError(412, "A commit has happened since. Please refresh and try again.")
            files = dict(self.commit(repo_type, repo_id, parent)["files"])
            new_files: dict[str, bytes] = {}
            for key, value in operations:
                path = value.get("path", "")
                if key == "file":
                    if value.get("encoding", "base64") != "base64":
                        raise HubError(400, f"Unsupported encoding for {path}")
                    new_files[path] = base64.b64decode(value["content"])
                elif key == "deletedFile":
                    if path not in files and path not in new_files:
                        raise HubError(404, "A file with this name doesn't exist", "EntryNotFound")
                    files.pop(path, None)
                    new_files.pop(path, None)
                elif key == "deletedFolder":
                    prefix = path.rstrip("/") + "/"
                    for p in [p for p in files if p.startswith(prefix)]:
                        files.pop(p)
                elif key == "lfsFile":
                    raise HubError(400, "This test server only accepts regular files (preupload said 'regular').")
                else:
                    raise HubError(400, f"Unknown commit operation {key!r}")
            sha = self._write_commit(
                repo_type, repo_id, parent, header.get("summary", ""), header.get("description", ""), new_files, files
            )
            if fail:
                raise HubError(500, "Internal Error - We're working hard to fix this as soon as possible!")
            refs[branch] = sha
            _atomic_write(self.repo_dir(repo_type, repo_id) / "refs.json", json.dumps(refs).encode())
            return sha

    def create_branch(self, repo_type: str, repo_id: str, branch: str, starting_point: str | None) -> None:
        with self.lock:
            refs = self.refs(repo_type, repo_id)
            if branch in refs:
                raise HubError(409, f"Reference already exists: refs/heads/{branch}")
            refs[branch] = self.resolve(repo_type, repo_id, starting_point or "main")
            _atomic_write(self.repo_dir(repo_type, repo_id) / "refs.json", json.dumps(refs).encode())


@dataclass
class HubServer:
    """A Hub-compatible server on 127.0.0.1 (a free port) storing repos under `root`.

    Args:
        root (`Path`): Folder for the repositories.
        tokens (`dict[str, str]`): Known tokens mapped to their user name.
    """

    root: Path
    tokens: dict[str, str] = field(default_factory=dict)
    fail_next_commits: int = 0
    drop_next_commits: int = 0
    requests: list[tuple[str, str, int]] = field(default_factory=list)

    def __post_init__(self):
        self.store = RepoStore(Path(self.root))
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> HubServer:
        server = self

        class Handler(_Handler):
            hub = server

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="hub-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # Helpers for tests: what the server holds.
    def repo_exists(self, repo_id: str, repo_type: str = "model") -> bool:
        return self.store.exists(repo_type, repo_id)

    def head(self, repo_id: str, branch: str = "main", repo_type: str = "model") -> str:
        return self.store.refs(repo_type, repo_id)[branch]

    def files(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> dict[str, bytes]:
        _, tree = self.store.tree(repo_type, repo_id, revision)
        return {p: self.store.read_object(repo_type, repo_id, oid) for p, oid in tree.items()}

    def commit_count(self, repo_id: str, branch: str = "main", repo_type: str = "model") -> int:
        sha, n = self.head(repo_id, branch, repo_type), 0
        while sha:
            n += 1
            sha = self.store.commit(repo_type, repo_id, sha)["parent"]
        return n


class _Handler(BaseHTTPRequestHandler):
    hub: HubServer
    protocol_version = "HTTP/1.1"
    server_version = "TestHub/1.0"

    def log_message(self, format: str, *args: Any) -> None:  # no headers, no tokens: keep quiet
        pass

    # ---- plumbing -------------------------------------------------------------------------------------------
    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().strip().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None, head: bool = False):
        self.send_response(status)
        headers = dict(headers or {})
        headers.setdefault("Content-Type", "application/json")
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head and body:
            self.wfile.write(body)
        self.hub.requests.append((self.command, urlsplit(self.path).path, status))

    def _json(self, status: int, data: Any, headers: dict[str, str] | None = None, head: bool = False):
        self._send(status, json.dumps(data).encode(), headers, head)

    def _user(self) -> str | None:
        """The user of the request's token; a token the server does not know raises a 401 (as the Hub does)."""
        auth = self.headers.get("Authorization")
        if not auth:
            return None
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or token not in self.hub.tokens:
            raise HubError(401, INVALID_CREDENTIALS)
        return self.hub.tokens[token]

    def _require_user(self) -> str:
        user = self._user()
        if user is None:
            raise HubError(401, "You must be authenticated to access this resource")
        return user

    def _check_read(self, repo_type: str, repo_id: str, user: str | None) -> dict[str, Any]:
        meta = self.hub.store.meta(repo_type, repo_id)
        if meta["private"] and user != meta["owner"]:
            raise HubError(401, "Repository not found", "RepoNotFound")
        return meta

    def _check_write(self, repo_type: str, repo_id: str) -> str:
        user = self._require_user()
        meta = self._check_read(repo_type, repo_id, user)
        if meta["owner"] != user:
            raise HubError(403, f"You don't have the rights to write to {repo_id}")
        return user

    def do_GET(self):
        self._dispatch(head=False)

    def do_HEAD(self):
        self._dispatch(head=True)

    def do_POST(self):
        self._dispatch(head=False)

    def do_PUT(self):
        self._dispatch(head=False)

    def do_DELETE(self):
        self._dispatch(head=False)

    def _dispatch(self, head: bool) -> None:
        body = self._read_body()
        split = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(split.query).items()}
        parts = [unquote(p) for p in split.path.strip("/").split("/")] if split.path.strip("/") else []
        self._current_commit = None
        try:
            user = self._user()
            if parts[:1] == ["api"]:
                self._api(parts[1:], query, body, user)
            else:
                self._resolve(parts, user, head)
        except HubError as err:
            headers = {"X-Error-Message": err.message}
            if err.code:
                headers["X-Error-Code"] = err.code
            if err.code == "EntryNotFound" and self._current_commit:
                headers["X-Repo-Commit"] = self._current_commit
            self._json(err.status, {"error": err.message}, headers, head)
        except ConnectionAbortedError:
            self.close_connection = True
        except Exception as err:  # a bug in this server: say so loudly in the answer
            self._json(500, {"error": f"test hub server error: {type(err).__name__}: {err}"})

    # ---- /api/... ---------------------------------------------------------------------------------------------
    def _api(self, parts: list[str], query: dict[str, str], body: bytes, user: str | None) -> None:
        method = self.command
        if parts == ["whoami-v2"] and method == "GET":
            user = self._require_user()
            return self._json(
                200,
                {
                    "type": "user",
                    "name": user,
                    "fullname": user,
                    "orgs": [],
                    "auth": {"type": "access_token", "accessToken": {"displayName": "test", "role": "write"}},
                },
            )
        if parts == ["validate-yaml"] and method == "POST":
            return self._validate_yaml(json.loads(body or b"{}"))
        if parts == ["repos", "create"] and method == "POST":
            user = self._require_user()
            payload = json.loads(body)
            repo_type = payload.get("type") or "model"
            namespace = payload.get("organization") or user
            if namespace != user:
                raise HubError(403, f"You don't have the rights to create a repo under {namespace}")
            repo_id = f"{namespace}/{payload['name']}"
            private = bool(payload.get("private")) or payload.get("visibility") == "private"
            url = f"{self.hub.url}/{URL_PREFIXES[repo_type]}{repo_id}"
            try:
                self.hub.store.create(repo_type, repo_id, user, private)
            except HubError as err:
                if err.status == 409:
                    return self._json(409, {"error": err.message, "url": url}, {"X-Error-Message": err.message})
                raise
            return self._json(200, {"url": url, "name": repo_id, "id": uuid.uuid4().hex})
        if parts == ["repos", "delete"] and method == "POST":
            payload = json.loads(body)
            repo_type = payload.get("type") or "model"
            repo_id = f"{payload.get('organization') or self._require_user()}/{payload['name']}"
            self._check_write(repo_type, repo_id)
            self.hub.store.delete(repo_type, repo_id)
            return self._send(200, b"{}")
        if len(parts) >= 3 and parts[0].rstrip("s") in REPO_TYPES:
            repo_type = parts[0][:-1]
            repo_id = f"{parts[1]}/{parts[2]}"
            return self._repo_api(repo_type, repo_id, parts[3:], query, body, user)
        raise HubError(404, f"Not implemented by the test hub server: {method} /api/{'/'.join(parts)}")

    def _validate_yaml(self, payload: dict[str, Any]) -> None:
        import yaml

        content = payload.get("content", "")
        errors = []
        if content.startswith("---"):
            end = content.find("\n---", 3)
            if end < 0:
                errors.append({"message": "metadata block is not closed"})
            else:
                try:
                    data = yaml.safe_load(content[3:end])
                    if data is not None and not isinstance(data, dict):
                        errors.append({"message": "metadata must be a mapping"})
                except yaml.YAMLError as err:
                    errors.append({"message": f"invalid YAML: {err}"})
        status = 400 if errors else 200
        self._json(status, {"errors": errors, "warnings": []})

    def _repo_api(
        self, repo_type: str, repo_id: str, rest: list[str], query: dict[str, str], body: bytes, user: str | None
    ) -> None:
        store = self.hub.store
        method = self.command
        if not rest or rest[0] == "revision":
            meta = self._check_read(repo_type, repo_id, user)
            revision = "/".join(rest[1:]) if rest else "main"
            sha, files = store.tree(repo_type, repo_id, revision)
            commit = store.commit(repo_type, repo_id, sha)
            return self._json(
                200,
                {
                    "_id": hashlib.md5(repo_id.encode()).hexdigest(),
                    "id": repo_id,
                    "modelId": repo_id,
                    "author": repo_id.split("/")[0],
                    "sha": sha,
                    "lastModified": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(commit["time"])),
                    "createdAt": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(meta["created"])),
                    "private": meta["private"],
                    "disabled": False,
                    "gated": False,
                    "downloads": 0,
                    "likes": 0,
                    "tags": [],
                    "siblings": [{"rfilename": p} for p in sorted(files)],
                },
            )
        action = rest[0]
        if action == "preupload" and method == "POST":
            self._check_write(repo_type, repo_id)
            _, files = store.tree(repo_type, repo_id, "/".join(rest[1:]) or "main")
            payload = json.loads(body)
            answer = [
                {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": files.get(f["path"])}
                for f in payload.get("files", [])
            ]
            return self._json(200, {"files": answer, "commitOid": None})
        if action == "commit" and method == "POST":
            self._check_write(repo_type, repo_id)
            branch = "/".join(rest[1:]) or "main"
            header, operations = {}, []
            for line in body.splitlines():
                if not line.strip():
                    continue
                item = json.loads(line)
                if item["key"] == "header":
                    header = item["value"]
                else:
                    operations.append((item["key"], item["value"]))
            if self.hub.drop_next_commits > 0:
                self.hub.drop_next_commits -= 1
                self.close_connection = True
                self.connection.shutdown(2)
                self.hub.requests.append((method, f"/api/{repo_type}s/{repo_id}/commit", 0))
                raise ConnectionAbortedError
            fail = self.hub.fail_next_commits > 0
            if fail:
                self.hub.fail_next_commits -= 1
            sha = store.apply_commit(repo_type, repo_id, branch, header, operations, fail=fail)
            url = f"{self.hub.url}/{URL_PREFIXES[repo_type]}{repo_id}/commit/{sha}"
            return self._json(200, {"success": True, "commitOid": sha, "commitUrl": url, "pullRequestUrl": None})
        if action == "branch" and method == "POST":
            self._check_write(repo_type, repo_id)
            payload = json.loads(body or b"{}")
            store.create_branch(repo_type, repo_id, "/".join(rest[1:]), payload.get("startingPoint"))
            return self._send(200, b"{}")
        if action == "refs" and method == "GET":
            self._check_read(repo_type, repo_id, user)
            refs = store.refs(repo_type, repo_id)
            branches = [{"name": b, "ref": f"refs/heads/{b}", "targetCommit": sha} for b, sha in refs.items()]
            return self._json(200, {"branches": branches, "tags": [], "converts": []})
        if action == "commits" and method == "GET":
            self._check_read(repo_type, repo_id, user)
            sha = store.resolve(repo_type, repo_id, "/".join(rest[1:]) or "main")
            history = []
            while sha:
                commit = store.commit(repo_type, repo_id, sha)
                history.append(
                    {
                        "id": sha,
                        "title": commit["summary"],
                        "message": commit["description"],
                        "authors": [{"user": repo_id.split("/")[0]}],
                        "date": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(commit["time"])),
                    }
                )
                sha = commit["parent"]
            return self._json(200, history)
        if action == "tree" and method == "GET":
            self._check_read(repo_type, repo_id, user)
            revision, path = rest[1] if len(rest) > 1 else "main", "/".join(rest[2:])
            sha, files = store.tree(repo_type, repo_id, revision)
            recursive = query.get("recursive", "").lower() in ("1", "true")
            return self._json(200, self._tree_entries(repo_type, repo_id, files, path, recursive))
        if action == "paths-info" and method == "POST":
            self._check_read(repo_type, repo_id, user)
            _, files = store.tree(repo_type, repo_id, "/".join(rest[1:]) or "main")
            if self.headers.get("Content-Type", "").startswith("application/json"):
                paths = json.loads(body).get("paths", [])
            else:
                paths = parse_qs(body.decode()).get("paths", [])
            entries = []
            for p in paths:
                if p in files:
                    entries.append(self._file_entry(repo_type, repo_id, p, files[p]))
                elif any(f.startswith(p.rstrip("/") + "/") for f in files):
                    entries.append({"type": "directory", "path": p, "oid": git_blob_sha1(p.encode())})
            return self._json(200, entries)
        raise HubError(404, f"Not implemented by the test hub server: {method} {'/'.join(rest)}")

    def _file_entry(self, repo_type: str, repo_id: str, path: str, oid: str) -> dict[str, Any]:
        return {"type": "file", "path": path, "oid": oid, "size": self.hub.store.object_size(repo_type, repo_id, oid)}

    def _tree_entries(
        self, repo_type: str, repo_id: str, files: dict[str, str], path: str, recursive: bool
    ) -> list[dict[str, Any]]:
        prefix = path.strip("/") + "/" if path.strip("/") else ""
        if prefix and not any(f.startswith(prefix) for f in files):
            raise HubError(404, f"{path} does not exist", "EntryNotFound")
        entries, folders = [], set()
        for p in sorted(files):
            if not p.startswith(prefix):
                continue
            rel = p[len(prefix) :].split("/")
            for depth in range(1, len(rel)):
                folder = prefix + "/".join(rel[:depth])
                if (recursive or depth == 1) and folder not in folders:
                    folders.add(folder)
                    entries.append(
                        {"type": "directory", "path": folder, "oid": git_blob_sha1(folder.encode()), "size": 0}
                    )
            if recursive or len(rel) == 1:
                entries.append(self._file_entry(repo_type, repo_id, p, files[p]))
        return entries

    # ---- /{repo}/resolve/{rev}/{path} -------------------------------------------------------------------------
    def _resolve(self, parts: list[str], user: str | None, head: bool) -> None:
        repo_type = "model"
        if parts[:1] in (["datasets"], ["spaces"]):
            repo_type, parts = parts[0][:-1], parts[1:]
        if len(parts) < 5 or parts[2] != "resolve" or self.command not in ("GET", "HEAD"):
            raise HubError(404, f"Not implemented by the test hub server: {self.command} {self.path}")
        repo_id = f"{parts[0]}/{parts[1]}"
        self._check_read(repo_type, repo_id, user)
        sha, files = self.hub.store.tree(repo_type, repo_id, parts[3])
        self._current_commit = sha
        path = "/".join(parts[4:])
        if path not in files:
            raise HubError(404, "Entry not found", "EntryNotFound")
        data = self.hub.store.read_object(repo_type, repo_id, files[path])
        headers = {
            "Content-Type": "application/octet-stream",
            "X-Repo-Commit": sha,
            "ETag": f'"{files[path]}"',
            "Content-Disposition": f"inline; filename*=UTF-8''{quote(path.split('/')[-1])}",
        }
        self._send(200, data, headers, head=head)
