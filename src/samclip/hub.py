"""Fetch model files over HTTP into samclip's cache: release URLs and Hugging Face hub repositories.

No ``huggingface_hub`` is needed. A hub id is ``hf-hub:<org>/<name>`` with an optional ``@<revision>`` (a
branch, tag or commit; default ``main``). Files come from ``{endpoint}/{repo}/resolve/{revision}/{file}``,
the endpoint being ``$HF_ENDPOINT`` (default ``https://huggingface.co``, or a mirror); ``$HF_TOKEN`` is sent
to the endpoint (never to the storage it redirects to) for gated or private repositories.

Which files a repository should give depends on what is loaded (:data:`PLANS`): a SAM or a merged model needs
``config.json`` and its weights (``model.safetensors``, else ``pytorch_model.bin``, either possibly sharded
with an ``*.index.json``); a CLIP takes open_clip's files (``open_clip_model.safetensors`` /
``open_clip_pytorch_model.bin`` and ``open_clip_config.json``) where the repository has them, else Hugging
Face's, and its tokenizer files. A CLIP repository without tokenizer files (open_clip's repositories of
OpenAI weights) gets OpenAI's BPE tokenizer from :data:`DEFAULT_CLIP_TOKENIZER_REPO`, the tokenizer open_clip
uses for them.

Every file is first asked for its size and hash (a ``HEAD`` request that does not follow redirects: large
files carry their SHA-256 in ``X-Linked-Etag``, small ones their git blob SHA-1 in ``ETag``), then
downloaded with a progress bar into a temporary file beside its target, checked against both, and renamed
into place: an interrupted download leaves no file that looks complete. A folder is complete once
``.samclip-hub.json`` (written last) lists its files; from then on loading it needs no network. With
``HF_HUB_OFFLINE=1`` nothing is downloaded and a missing folder is an error that says where to put the files.
Processes that fetch the same folder or file at once (the ranks of a ``torchrun`` job) take turns on a lock
file beside it: the first downloads, the others then find it complete.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import http.client
import json
import os
import re
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .checkpoint import atomic_write_bytes

HUB_PREFIX = "hf-hub:"
DEFAULT_ENDPOINT = "https://huggingface.co"
MARKER = ".samclip-hub.json"
DEFAULT_CLIP_TOKENIZER_REPO = "openai/clip-vit-base-patch32"
TIMEOUT_S = 60.0
_REPO_PART = r"[A-Za-z0-9][A-Za-z0-9._-]*"
_REPO_RE = re.compile(rf"^{_REPO_PART}/{_REPO_PART}$")
_REVISION_RE = re.compile(r"^[A-Za-z0-9._-][A-Za-z0-9._/-]*$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_SHA1_RE = re.compile(r"^[0-9a-f]{40}$")


class DownloadError(OSError):
    """A file could not be fetched: offline, not found, refused, or not what the server announced."""


# one alternative = files fetched together; a group takes its first alternative the repository has
Alternative = tuple[str, ...]


@dataclass(frozen=True)
class FileGroup:
    what: str  # for messages: "weights", "config", "tokenizer"
    alternatives: tuple[Alternative, ...]
    required: bool = True


_HF_WEIGHTS = FileGroup("weights", (("model.safetensors",), ("model.safetensors.index.json",),
                                    ("pytorch_model.bin",), ("pytorch_model.bin.index.json",)))
_TOKENIZER = FileGroup("tokenizer", (("tokenizer.json",), ("vocab.json", "merges.txt")), required=False)
_OPEN_CLIP_WEIGHTS = FileGroup("open_clip weights", (("open_clip_model.safetensors",),
                                                     ("open_clip_pytorch_model.bin",)))

# per kind, the file sets tried in order; the first whose required groups all exist is fetched
PLANS: dict[str, tuple[tuple[FileGroup, ...], ...]] = {
    "sam": ((FileGroup("config", (("config.json",),)), _HF_WEIGHTS),),
    "samclip": ((FileGroup("config", (("config.json",),)), _HF_WEIGHTS, _TOKENIZER),),
    "clip": (
        (_OPEN_CLIP_WEIGHTS, FileGroup("open_clip config", (("open_clip_config.json",),), required=False),
         _TOKENIZER),
        (FileGroup("config", (("config.json",),)), _HF_WEIGHTS, _TOKENIZER),
    ),
}


# ----------------------------------------------------------------------------------------------- ids
def is_hub_id(source: object) -> bool:
    return isinstance(source, str) and source.startswith(HUB_PREFIX)


def parse_hub_id(source: str) -> tuple[str, str]:
    """``hf-hub:org/name[@revision]`` -> (``org/name``, revision); a clear ValueError otherwise."""
    body = source[len(HUB_PREFIX):] if source.startswith(HUB_PREFIX) else source
    repo, _, revision = body.partition("@")
    revision = revision or "main"
    if not _REPO_RE.match(repo) or ".." in repo:
        raise ValueError(f"{source!r}: a hub id is hf-hub:<org>/<name>[@<revision>], e.g. hf-hub:facebook/sam-vit-base")
    if not _REVISION_RE.match(revision) or ".." in revision:
        raise ValueError(f"{source!r}: {revision!r} is not a branch, tag or commit name")
    return repo, revision


def endpoint() -> str:
    """``$HF_ENDPOINT`` (empty: the default), checked to be an http(s) URL with a host."""
    from urllib.parse import urlsplit

    value = os.environ.get("HF_ENDPOINT", "").strip() or DEFAULT_ENDPOINT
    try:
        parts = urlsplit(value)
        ok = parts.scheme in ("http", "https") and bool(parts.hostname)
    except ValueError:
        ok = False
    if not ok:
        raise DownloadError(f"HF_ENDPOINT={value!r} is not an http(s) URL such as {DEFAULT_ENDPOINT} or a mirror's")
    return value.rstrip("/")


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def repo_folder(cache: Path, repo: str, revision: str) -> Path:
    """Where ``repo`` at ``revision`` is kept: ``<cache>/hf/<org>--<name>/<revision>``."""
    return cache / "hf" / repo.replace("/", "--") / urllib.parse.quote(revision, safe="")


def is_complete(folder: Path) -> bool:
    return (folder / MARKER).is_file()


@contextlib.contextmanager
def locked(target: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``<target>.lock`` (created beside it) while fetching ``target``. Where the file
    system has no locks (some cluster file systems refuse ``flock``), processes fetch side by side instead: their
    temporary files have their own names and each rename is atomic, so the result is the same, only slower."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(target.parent / f"{target.name}.lock", os.O_CREAT | os.O_RDWR, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:
            pass
        yield
    finally:
        os.close(fd)  # releases the lock


# ------------------------------------------------------------------------------------------ requests
@dataclass(frozen=True)
class RemoteFile:
    url: str  # where the bytes are (after the endpoint's redirect)
    size: int | None
    etag: str  # sha256 hex (large files), git blob sha1 hex (small ones), or "" when unknown
    commit: str  # the revision's commit, "" when not said


class _Absent(Exception):
    """The file (only the file) does not exist at that revision."""


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:  # noqa: ARG002
        return None


def _auth_headers(url: str) -> dict[str, str]:
    token = os.environ.get("HF_TOKEN", "").strip()
    same_host = urllib.parse.urlsplit(url).netloc == urllib.parse.urlsplit(endpoint()).netloc
    return {"Authorization": f"Bearer {token}"} if token and same_host else {}


def _request(url: str, method: str = "GET") -> urllib.request.Request:
    headers = {"User-Agent": "samclip", "Accept-Encoding": "identity", **_auth_headers(url)}
    return urllib.request.Request(url, method=method, headers=headers)


def _clean_etag(value: str | None) -> str:
    tag = (value or "").strip()
    if tag.startswith("W/"):
        tag = tag[2:]
    return tag.strip('"').lower()


def _size(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _refused(repo: str, revision: str, name: str, code: int, error_code: str) -> DownloadError:
    if error_code == "GatedRepo" or code == 403:
        return DownloadError(f"hf-hub:{repo}: access refused ({code}); the repository is gated or private: accept "
                             "its terms on the hub and set HF_TOKEN")
    if error_code == "RepoNotFound" or code == 401:
        return DownloadError(f"hf-hub:{repo}: no such repository (or a private one: set HF_TOKEN)")
    if error_code == "RevisionNotFound":
        return DownloadError(f"hf-hub:{repo}: no revision {revision!r}")
    return DownloadError(f"hf-hub:{repo}@{revision}: {name}: the server answered HTTP {code}")


def remote_file(repo: str, revision: str, name: str) -> RemoteFile:
    """Size, hash and location of one file of a repository; raises ``_Absent`` for a missing file."""
    quoted = urllib.parse.quote(revision, safe="")
    url = f"{endpoint()}/{repo}/resolve/{quoted}/{urllib.parse.quote(name)}"
    opener = urllib.request.build_opener(_NoRedirect)
    for _ in range(5):  # relative redirects: a renamed repository
        try:
            with opener.open(_request(url, "HEAD"), timeout=TIMEOUT_S) as r:
                h = r.headers
                return RemoteFile(url, _size(h.get("Content-Length")), _clean_etag(h.get("ETag")),
                                  h.get("X-Repo-Commit", ""))
        except urllib.error.HTTPError as e:
            h = e.headers
            if e.code in (301, 302, 303, 307, 308) and h.get("Location"):
                location = urllib.parse.urljoin(url, h["Location"])
                if h.get("Location", "").startswith("/"):
                    url = location
                    continue
                etag = _clean_etag(h.get("X-Linked-Etag") or h.get("ETag"))
                return RemoteFile(location, _size(h.get("X-Linked-Size") or h.get("Content-Length")), etag,
                                  h.get("X-Repo-Commit", ""))
            error_code = h.get("X-Error-Code", "") if h else ""
            if e.code == 404 and error_code in ("", "EntryNotFound"):
                raise _Absent(name) from None
            raise _refused(repo, revision, name, e.code, error_code) from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
            raise DownloadError(f"hf-hub:{repo}: cannot reach {endpoint()} ({_reason(e)}); offline? set HF_ENDPOINT "
                                "for a mirror, or fetch the repository's files elsewhere and load their folder by path"
                                ) from None
    raise DownloadError(f"hf-hub:{repo}: too many redirects")


def _reason(e: BaseException) -> str:
    return str(getattr(e, "reason", None) or e)


def _hash_file(path: Path, digest: Any) -> str:
    """The hex digest of ``path``'s bytes fed to ``digest`` (a hashlib object, possibly already seeded)."""
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _git_blob_sha1(path: Path) -> str:
    """Git's blob id: SHA-1 of ``blob <size>\\0`` then the bytes (the hub's ETag of a small file)."""
    return _hash_file(path, hashlib.sha1(f"blob {path.stat().st_size}\0".encode(), usedforsecurity=False))


def download_url(url: str, target: Path, *, sha256_prefix: str = "", md5: str = "", size: int | None = None,
                 git_sha1: str = "", desc: str | None = None) -> Path:
    """Fetch ``url`` into ``target`` with a progress bar (on a terminal), atomically.

    The bytes go to a temporary file beside ``target`` (its own name per process, so ranks of a
    ``torchrun`` job fetching the same file do not collide), are checked against ``size`` and the hashes
    when given, and only then renamed to ``target``. Any failure removes the temporary file and raises
    :class:`DownloadError`.
    """
    from tqdm import tqdm

    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    tmp = Path(tmp_name)
    digest, md5_digest = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
    try:
        with os.fdopen(fd, "wb") as f, urllib.request.urlopen(_request(url), timeout=TIMEOUT_S) as r:  # noqa: S310
            total = size if size is not None else _size(r.headers.get("Content-Length"))
            with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc or target.name,
                      disable=None, file=sys.stderr, leave=False) as bar:
                while chunk := r.read(1 << 20):
                    f.write(chunk)
                    digest.update(chunk)
                    if md5:
                        md5_digest.update(chunk)
                    bar.update(len(chunk))
        got = tmp.stat().st_size
        if size is not None and got != size:
            raise DownloadError(f"{url}: received {got} bytes of {size}; the download was cut off, try again")
        if sha256_prefix and not digest.hexdigest().startswith(sha256_prefix.lower()):
            raise DownloadError(f"{url}: SHA-256 {digest.hexdigest()[:16]}... is not the published "
                                f"{sha256_prefix[:16]}...; the file is corrupt or was replaced")
        if md5 and md5_digest.hexdigest() != md5.lower():
            raise DownloadError(f"{url}: MD5 {md5_digest.hexdigest()} is not the published {md5}; the file is "
                                "corrupt or was replaced")
        if git_sha1 and _git_blob_sha1(tmp) != git_sha1:
            raise DownloadError(f"{url}: its content does not match the hash the server announced")
        os.chmod(tmp, 0o644)  # a temporary file is private; the cache may be shared
        os.replace(tmp, target)
    except urllib.error.HTTPError as e:
        tmp.unlink(missing_ok=True)
        raise DownloadError(f"{url}: the server answered HTTP {e.code}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, DownloadError):
            raise
        raise DownloadError(f"could not download {url} ({_reason(e)}); offline? fetch it elsewhere and put it "
                            f"at {target}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target


# ------------------------------------------------------------------------------------- repositories
_CLI_KINDS = {"samclip": "model"}  # the command line's --kind for a merged model


def fetch(kind: str, source: str, cache: Path, *, force: bool = False,
          log: Callable[[str], None] | None = None) -> Path:
    """The local folder of ``source`` (``hf-hub:org/name[@rev]``) holding what a ``kind`` model needs
    (``sam``, ``clip`` or ``samclip``), downloading what is missing. ``force`` fetches it again."""
    if kind not in PLANS:
        raise ValueError(f"unknown model kind {kind!r}; expected one of {sorted(PLANS)}")
    repo, revision = parse_hub_id(source)
    folder = repo_folder(cache, repo, revision)
    if is_complete(folder) and not force:
        return folder
    if offline():
        flag = _CLI_KINDS.get(kind, kind)
        raise DownloadError(f"hf-hub:{repo}@{revision} is not in the cache and HF_HUB_OFFLINE is set; fetch it "
                            f"on a machine with network (`samclip download {source} --kind {flag}`) and copy "
                            f"{folder} here")
    with locked(folder):
        if is_complete(folder) and not force:  # another process fetched it while this one waited
            return folder
        return _fetch_folder(kind, repo, revision, folder, log)


def _fetch_folder(kind: str, repo: str, revision: str, folder: Path, log: Callable[[str], None] | None) -> Path:
    say = log or (lambda msg: print(msg, file=sys.stderr))
    plan, found = _choose_plan(kind, repo, revision)
    files: dict[str, str] = {}
    commit = ""
    for name, remote in found:
        files[name] = _fetch_one(repo, revision, name, remote, folder, say)
        commit = commit or remote.commit
        for shard in _shards(folder / name):
            try:
                remote_shard = remote_file(repo, revision, shard)
            except _Absent:
                raise DownloadError(f"hf-hub:{repo}@{revision}: {name} names the shard {shard}, which the "
                                    "repository does not have") from None
            files[shard] = _fetch_one(repo, revision, shard, remote_shard, folder, say)
    tokenizer_from = repo
    if kind == "clip" and not any(n in files for n in ("tokenizer.json", "vocab.json")) and _default_bpe(folder):
        tokenizer_from = DEFAULT_CLIP_TOKENIZER_REPO
        for name, remote in _first_alternative(_TOKENIZER, DEFAULT_CLIP_TOKENIZER_REPO, "main"):
            files[name] = _fetch_one(DEFAULT_CLIP_TOKENIZER_REPO, "main", name, remote, folder, say)
    _check_fetched(repo, revision, folder, list(files))  # before the folder counts as complete
    record = {"repo": repo, "revision": revision, "commit": commit, "kind": kind, "plan": plan,
              "files": files, "tokenizer_from": tokenizer_from, "fetched_at": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                             time.gmtime())}
    atomic_write_bytes(folder / MARKER, (json.dumps(record, indent=2) + "\n").encode())
    return folder


def _check_fetched(repo: str, revision: str, folder: Path, names: list[str]) -> None:
    """Every fetched JSON file parses and every safetensors file has a readable header; a file that does not is
    deleted (a repository serving it is broken, or a proxy answered for it) and the fetch fails, so the cache never
    marks an unreadable folder complete."""
    import struct

    for name in names:
        path = folder / name
        try:
            if name.endswith(".json"):
                json.loads(path.read_text(encoding="utf-8"))
            elif name.endswith(".safetensors"):
                with path.open("rb") as f:
                    (size,) = struct.unpack("<Q", f.read(8))
                    if size > path.stat().st_size:
                        raise ValueError(f"header of {size} bytes in a file of {path.stat().st_size}")
                    json.loads(f.read(size).decode("utf-8"))
        except (ValueError, UnicodeDecodeError, struct.error) as e:
            path.unlink(missing_ok=True)
            raise DownloadError(f"hf-hub:{repo}@{revision}: {name} is not a readable "
                                f"{'JSON' if name.endswith('.json') else 'safetensors'} file ({e}); it was removed "
                                "from the cache") from None


def _first_alternative(group: FileGroup, repo: str, revision: str) -> list[tuple[str, RemoteFile]]:
    for alternative in group.alternatives:
        try:
            return [(name, remote_file(repo, revision, name)) for name in alternative]
        except _Absent:
            continue
    return []


def _choose_plan(kind: str, repo: str, revision: str) -> tuple[int, list[tuple[str, RemoteFile]]]:
    missing: list[str] = []
    for i, plan in enumerate(PLANS[kind]):
        found: list[tuple[str, RemoteFile]] = []
        for group in plan:
            got = _first_alternative(group, repo, revision)
            if not got and group.required:
                missing.append(f"{group.what} ({' / '.join('+'.join(a) for a in group.alternatives)})")
                break
            found.extend(got)
        else:
            return i, found
    what = {"sam": "SAM", "clip": "CLIP", "samclip": "merged SAM-CLIP"}[kind]
    raise DownloadError(f"hf-hub:{repo}@{revision} has no {what} model files samclip can read: missing "
                        f"{'; or '.join(missing)}")


def _fetch_one(repo: str, revision: str, name: str, remote: RemoteFile, folder: Path,
               say: Callable[[str], None]) -> str:
    target = folder / name
    sha256 = remote.etag if _SHA256_RE.match(remote.etag) else ""
    git_sha1 = remote.etag if _SHA1_RE.match(remote.etag) else ""
    same_size = target.is_file() and (remote.size is None or target.stat().st_size == remote.size)
    if same_size and ((sha256 and _hash_file(target, hashlib.sha256()) == sha256)
                      or (git_sha1 and _git_blob_sha1(target) == git_sha1)):
        return sha256 or git_sha1  # already here from an interrupted fetch of the folder
    if remote.size and remote.size > 1 << 24:
        say(f"samclip: downloading {name} of hf-hub:{repo} ({remote.size / 2**20:.0f} MiB) into {folder}")
    download_url(remote.url, target, sha256_prefix=sha256, size=remote.size, git_sha1=git_sha1,
                 desc=f"{repo.split('/')[-1]}/{name}")
    return sha256 or git_sha1


def _shards(path: Path) -> list[str]:
    """The shard files a ``*.index.json`` names (relative names inside the folder only)."""
    if not path.name.endswith(".index.json"):
        return []
    try:
        weight_map = json.loads(path.read_text(encoding="utf-8"))["weight_map"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
        raise DownloadError(f"{path}: not a valid weight index ({type(e).__name__}: {e})") from None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise DownloadError(f"{path}: not a valid weight index (weight_map must map tensor names to shard file "
                            "names)")
    shards = sorted(set(weight_map.values()))
    for shard in shards:
        if "/" in shard or "\\" in shard or shard.startswith("."):
            raise DownloadError(f"{path}: names a shard outside the folder ({shard!r})")
    return shards


def _default_bpe(folder: Path) -> bool:
    """Whether an open_clip / HF CLIP folder uses OpenAI's BPE (no other tokenizer named in its config)."""
    for name, key_path in (("open_clip_config.json", ("model_cfg", "text_cfg", "hf_tokenizer_name")),
                           ("config.json", ("text_config", "tokenizer_class"))):
        path = folder / name
        if path.is_file():
            try:
                node: object = json.loads(path.read_text())
            except json.JSONDecodeError:
                return True
            for key in key_path:
                node = node.get(key) if isinstance(node, dict) else None
            return not node
    return True


__all__ = ["DEFAULT_CLIP_TOKENIZER_REPO", "DownloadError", "HUB_PREFIX", "PLANS", "download_url", "fetch",
           "is_complete", "is_hub_id", "parse_hub_id", "repo_folder"]
