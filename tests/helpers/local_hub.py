"""A stand-in for the Hugging Face Hub's HTTP API on loopback, for the hub-download tests.

It serves what huggingface_hub (2.x, read from its file_download.py, hf_api.py and
_snapshot_download.py) asks of the Hub when it fetches a model repository:

- `GET /api/models/{repo}` and `/api/models/{repo}/revision/{rev}`: model_info, with `sha`
  and `siblings`;
- `GET /api/models/{repo}/tree/{rev}[/{path}]`: list_repo_tree, as one page;
- `HEAD`/`GET /{repo}/resolve/{rev}/{file}`: a small file is answered on the spot with
  `X-Repo-Commit`, `ETag` (its git blob id) and `Content-Length`; an LFS file (weights)
  gets what the Hub sends, a 302 to a CDN carrying `X-Repo-Commit`, `X-Linked-Etag` (its
  sha256) and `X-Linked-Size`;
- the CDN, a second origin (another port, so huggingface_hub treats it as off-Hub as it
  does the real one): `GET /repos/{sha256}`, with `Range: bytes=N-` for a resumed download;
- `GET /api/agent-harnesses`, which the client asks once a day for its user agent: none;
- 404s with the Hub's `X-Error-Code` (RepoNotFound, RevisionNotFound, EntryNotFound).

It never sends `X-Xet-Hash`, so huggingface_hub downloads over plain HTTP (http_get) even
where hf_xet is installed, and nothing needs turning off. Every request is logged
(`requests`), so a test can say that a run made none.

    with LocalHub() as hub:
        repo = add_model_repo(hub, "someone/tiny", model_folder)
        env = hub.environment(tmp_path / "hf-home")  # HF_ENDPOINT, HF_HOME, HF_HUB_CACHE
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

# What the Hub stores in LFS (and serves from its CDN): weights, not configs or tokenizers.
LFS_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth")
# In add_model_repo's repositories, what lmprof's hub code leaves on the hub.
UNFETCHED = frozenset({"README.md"})


@dataclass(frozen=True)
class HubFile:
    path: str  # inside the repository, '/'-separated
    data: bytes

    @property
    def size(self) -> int:
        return len(self.data)

    @property
    def lfs(self) -> bool:
        return self.path.endswith(LFS_SUFFIXES)

    @property
    def git_oid(self) -> str:
        return hashlib.sha1(b"blob %d\0" % self.size + self.data).hexdigest()

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    def tree_entry(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"type": "file", "path": self.path, "size": self.size, "oid": self.git_oid}
        if self.lfs:
            entry["lfs"] = {"oid": self.sha256, "size": self.size, "pointerSize": 134}
        return entry


@dataclass(frozen=True)
class HubRepo:
    repo_id: str
    files: dict[str, HubFile]

    @property
    def sha(self) -> str:
        """The commit: a hash of what the repository holds, so equal contents give equal commits."""
        digest = hashlib.sha1()
        for path in sorted(self.files):
            digest.update(f"{path}\0{self.files[path].git_oid}\n".encode())
        return digest.hexdigest()

    def fetched_bytes(self, paths: Iterable[str]) -> int:
        return sum(self.files[path].size for path in paths)


class LocalHub:
    """The hub and its CDN on two free ports of 127.0.0.1, each served from a thread."""

    def __init__(self) -> None:
        self.repos: dict[str, HubRepo] = {}
        self.requests: list[tuple[str, str, str]] = []  # (origin 'hub' or 'cdn', method, path)
        self._lock = threading.Lock()
        self._servers: list[ThreadingHTTPServer] = []

    # --- the repositories ---------------------------------------------------------------

    def add(self, repo_id: str, files: Iterable[HubFile]) -> HubRepo:
        repo = HubRepo(repo_id, {f.path: f for f in files})
        self.repos[repo_id] = repo
        return repo

    def blob(self, sha256: str) -> HubFile | None:
        for repo in self.repos.values():
            for f in repo.files.values():
                if f.lfs and f.sha256 == sha256:
                    return f
        return None

    # --- the servers --------------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        return _origin(self._servers[0])

    @property
    def cdn(self) -> str:
        return _origin(self._servers[1])

    def environment(self, hf_home: Path) -> dict[str, str]:
        """What a process needs to fetch from this hub into an empty cache under `hf_home`."""
        return {
            "HF_ENDPOINT": self.endpoint,
            "HF_HOME": str(hf_home),
            "HF_HUB_CACHE": str(hf_home / "hub"),
            "HF_HUB_OFFLINE": "0",
            "TRANSFORMERS_OFFLINE": "0",
        }

    def log(self, origin: str, method: str, path: str) -> None:
        with self._lock:
            self.requests.append((origin, method, path))

    def start(self) -> LocalHub:
        for role in ("hub", "cdn"):
            server = ThreadingHTTPServer(("127.0.0.1", 0), _HubHandler)
            server.daemon_threads = True
            server.hub = self  # type: ignore[attr-defined]
            server.role = role  # type: ignore[attr-defined]
            threading.Thread(
                target=server.serve_forever, args=(0.05,), name=f"local-hub-{role}", daemon=True
            ).start()
            self._servers.append(server)
        return self

    def stop(self) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()

    def __enter__(self) -> LocalHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def add_model_repo(hub: LocalHub, repo_id: str, model_folder: Path) -> HubRepo:
    """A model repository as the Hub holds one: `model_folder`'s config, tokenizer and
    safetensors files (without lmprof's own manifest), and a README.md, which lmprof's
    hub code does not fetch (UNFETCHED)."""
    files = [
        HubFile(path.name, path.read_bytes())
        for path in sorted(model_folder.iterdir())
        if path.is_file() and path.name != "lmprof_model.json"
    ]
    return hub.add(repo_id, [*files, HubFile("README.md", f"# {repo_id}\n\nRandom weights.\n".encode())])


def _origin(server: ThreadingHTTPServer) -> str:
    host, port = server.server_address[:2]
    return f"http://{host}:{port}"


class _HubHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as huggingface_hub's client expects of the Hub
    # Headers and body go out in two writes: with Nagle's algorithm on, the second waits for
    # a delayed ACK (40 ms a response on Linux), which would be most of a download's time.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:  # the test's output stays quiet
        pass

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def do_GET(self) -> None:
        self._answer(body=True)

    # --- routing ------------------------------------------------------------------------

    def _answer(self, body: bool) -> None:
        hub: LocalHub = self.server.hub  # type: ignore[attr-defined]
        url = urlsplit(self.path)
        path = unquote(url.path)
        hub.log(self.server.role, self.command, self.path)  # type: ignore[attr-defined]
        if self.server.role == "cdn":  # type: ignore[attr-defined]
            blob = hub.blob(path.removeprefix("/repos/")) if path.startswith("/repos/") else None
            if blob is None:
                return self._error(404, "EntryNotFound", body=body)
            return self._send_file(blob, {}, body)
        parts = path.strip("/").split("/")
        if path == "/api/agent-harnesses":  # the client's user agent: no AI agent harness known
            return self._json({"standardEnvVars": [], "harnesses": {}}, body)
        if parts[:2] == ["api", "models"] and len(parts) >= 4:
            return self._api(hub, parts[2:], parse_qs(url.query), body)
        if len(parts) >= 5 and parts[2] == "resolve":
            return self._resolve(hub, "/".join(parts[:2]), parts[3], "/".join(parts[4:]), body)
        self._error(404, None, body=body)

    def _api(self, hub: LocalHub, parts: list[str], query: dict[str, list[str]], body: bool) -> None:
        repo = hub.repos.get("/".join(parts[:2]))
        if repo is None:
            return self._error(404, "RepoNotFound", body=body)
        rest = parts[2:]
        if not rest or (rest[0] == "revision" and len(rest) == 2):
            if rest and rest[1] not in ("main", repo.sha):
                return self._error(404, "RevisionNotFound", body=body)
            return self._json(_model_info(repo), body)
        if rest[0] == "tree" and len(rest) >= 2:
            if rest[1] not in ("main", repo.sha):
                return self._error(404, "RevisionNotFound", body=body)
            recursive = query.get("recursive", ["False"])[0].lower() == "true"
            return self._json(_tree(repo, "/".join(rest[2:]), recursive), body)
        self._error(404, None, body=body)

    def _resolve(self, hub: LocalHub, repo_id: str, revision: str, file_path: str, body: bool) -> None:
        repo = hub.repos.get(repo_id)
        if repo is None:
            return self._error(404, "RepoNotFound", body=body)
        if revision not in ("main", repo.sha):
            return self._error(404, "RevisionNotFound", body=body)
        commit = {"X-Repo-Commit": repo.sha}
        found = repo.files.get(file_path)
        if found is None:
            return self._error(404, "EntryNotFound", body=body, headers=commit)
        if found.lfs:
            filename = quote(found.path.rsplit("/", 1)[-1])
            location = f"{hub.cdn}/repos/{found.sha256}?response-content-disposition=attachment%3B+filename%3D{filename}"
            headers = {**commit, "Location": location, "X-Linked-Etag": f'"{found.sha256}"'}
            headers["X-Linked-Size"] = str(found.size)
            return self._send(302, headers, b"", body)
        self._send_file(found, {**commit, "ETag": f'"{found.git_oid}"'}, body)

    # --- responses ----------------------------------------------------------------------

    def _send_file(self, found: HubFile, headers: dict[str, str], body: bool) -> None:
        start = _range_start(self.headers.get("Range"))
        if start is None:
            return self._send(200, {**headers, "Accept-Ranges": "bytes"}, found.data, body)
        if start >= found.size:
            return self._send(416, {"Content-Range": f"bytes */{found.size}"}, b"", body)
        content_range = f"bytes {start}-{found.size - 1}/{found.size}"
        self._send(206, {**headers, "Content-Range": content_range}, found.data[start:], body)

    def _json(self, value: Any, body: bool) -> None:
        self._send(200, {"Content-Type": "application/json"}, json.dumps(value).encode(), body)

    def _error(
        self, status: int, code: str | None, *, body: bool, headers: dict[str, str] | None = None
    ) -> None:
        extra = dict(headers or {})
        if code is not None:
            extra["X-Error-Code"] = code
        message = json.dumps({"error": code or "Not Found"}).encode()
        self._send(status, {"Content-Type": "application/json", **extra}, message, body)

    def _send(self, status: int, headers: dict[str, str], data: bytes, body: bool) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
            self.wfile.write(data)


def _model_info(repo: HubRepo) -> dict[str, Any]:
    owner = repo.repo_id.split("/")[0]
    return {
        "_id": repo.sha[:24],
        "id": repo.repo_id,
        "modelId": repo.repo_id,
        "author": owner,
        "sha": repo.sha,
        "private": False,
        "disabled": False,
        "gated": False,
        "tags": ["safetensors", "llama"],
        "library_name": "transformers",
        "siblings": [{"rfilename": path} for path in sorted(repo.files)],
    }


def _tree(repo: HubRepo, folder: str, recursive: bool) -> list[dict[str, Any]]:
    prefix = f"{folder}/" if folder else ""
    entries: list[dict[str, Any]] = []
    folders: set[str] = set()
    for path in sorted(repo.files):
        if not path.startswith(prefix):
            continue
        inner = path[len(prefix) :]
        if "/" in inner and not recursive:
            folders.add(prefix + inner.split("/")[0])
            continue
        if recursive:  # the Hub lists every folder on the way down as well
            parts = inner.split("/")[:-1]
            folders.update(prefix + "/".join(parts[: i + 1]) for i in range(len(parts)))
        entries.append(repo.files[path].tree_entry())
    entries += [{"type": "directory", "path": name, "size": 0, "oid": "0" * 40} for name in sorted(folders)]
    return entries


def _range_start(header: str | None) -> int | None:
    """The first byte of `Range: bytes=N-` (all huggingface_hub sends when it resumes)."""
    if not header or not header.startswith("bytes="):
        return None
    first = header.removeprefix("bytes=").split("-", 1)[0]
    return int(first) if first.isdigit() else None
