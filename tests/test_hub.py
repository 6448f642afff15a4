"""Downloads from the Hugging Face hub and release URLs (``samclip.hub``, ``samclip.pretrained``), against a
local server that answers as the hub does: ``/{repo}/resolve/{revision}/{file}``, large files redirected to
storage with their SHA-256 in ``X-Linked-Etag``, small ones served with their git blob SHA-1 as ``ETag``,
``X-Error-Code`` on 4xx."""

from __future__ import annotations

import hashlib
import http.server
import json
import shutil
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import samclip
from samclip import hub, pretrained
from samclip.cli import main as cli_main
from samclip.convert import to_openai
from samclip.testing import tiny_clip, tiny_merged_model

LFS_MIN_BYTES = 2048  # files this big are "LFS" files: redirected, SHA-256 announced


class FakeHub:
    """Repositories served from folders; records every request; can corrupt, cut or refuse files."""

    def __init__(self) -> None:
        self.repos: dict[tuple[str, str], Path] = {}
        self.gated: dict[str, str] = {}  # repo -> token that opens it
        self.corrupt: set[str] = set()  # file names whose stored bytes differ from the announced hash
        self.cut: set[str] = set()  # file names whose body stops halfway
        self.requests: Counter[tuple[str, str]] = Counter()  # (method, path)
        handler = self._handler()
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def add(self, repo: str, folder: Path, revision: str = "main") -> None:
        self.repos[(repo, revision)] = folder

    def gets(self, name: str) -> int:
        return sum(n for (m, p), n in self.requests.items() if m == "GET" and p.endswith("/" + name))

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _error(self, code: int, error_code: str) -> None:
                self.send_response(code)
                self.send_header("X-Error-Code", error_code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def _send(self, data: bytes, headers: dict[str, str], body: bool) -> None:
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                if body:
                    self.wfile.write(data[: len(data) // 2] if self.path.split("/")[-1] in fake.cut else data)

            def _serve(self, body: bool) -> None:
                method = "GET" if body else "HEAD"
                fake.requests[(method, self.path)] += 1
                parts = self.path.split("/")
                if parts[1] == "storage":  # /storage/<org>/<name>/<rev>/<file>
                    folder = fake.repos[(f"{parts[2]}/{parts[3]}", parts[4])]
                    data = (folder / parts[5]).read_bytes()
                    if parts[5] in fake.corrupt:
                        data = data[:-1] + bytes([data[-1] ^ 1])
                    return self._send(data, {}, body)
                if len(parts) != 6 or parts[3] != "resolve":
                    return self._error(404, "")
                repo, revision, name = f"{parts[1]}/{parts[2]}", parts[4], parts[5]
                if not any(r == repo for r, _ in fake.repos):
                    return self._error(401, "RepoNotFound")
                token = fake.gated.get(repo)
                if token and self.headers.get("Authorization") != f"Bearer {token}":
                    return self._error(403, "GatedRepo")
                if (repo, revision) not in fake.repos:
                    return self._error(404, "RevisionNotFound")
                path = fake.repos[(repo, revision)] / name
                if not path.is_file():
                    return self._error(404, "EntryNotFound")
                data = path.read_bytes()
                if len(data) >= LFS_MIN_BYTES:
                    self.send_response(302)
                    self.send_header("Location", f"{fake.url}/storage/{repo}/{revision}/{name}")
                    self.send_header("X-Linked-Etag", f'"{hashlib.sha256(data).hexdigest()}"')
                    self.send_header("X-Linked-Size", str(len(data)))
                    self.send_header("X-Repo-Commit", "c0ffee")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return None
                blob = hashlib.sha1(f"blob {len(data)}\0".encode() + data, usedforsecurity=False).hexdigest()
                return self._send(data, {"ETag": f'"{blob}"', "X-Repo-Commit": "c0ffee"}, body)

            def do_HEAD(self) -> None:  # noqa: N802
                self._serve(body=False)

            def do_GET(self) -> None:  # noqa: N802
                self._serve(body=True)

        return Handler


@pytest.fixture()
def fake_hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[FakeHub]:
    fake = FakeHub()
    fake.thread.start()
    monkeypatch.setenv("HF_ENDPOINT", fake.url)
    monkeypatch.setenv("SAMCLIP_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    yield fake
    fake.server.shutdown()
    fake.server.server_close()


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def _open_clip_folder(model: samclip.CLIP, folder: Path, config: dict | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in to_openai(model.state_dict()).items()},
              str(folder / "open_clip_model.safetensors"))
    if config is not None:
        (folder / "open_clip_config.json").write_text(json.dumps(config))
    return folder


def _tokenizer_repo(tokenizer: samclip.ClipTokenizer, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save(folder / "tokenizer.json")
    return folder


# ------------------------------------------------------------------------------------------ hub ids
@pytest.mark.parametrize("bad", ["hf-hub:sam", "hf-hub:a/b/c", "hf-hub:a/b@../x", "hf-hub:/b", "hf-hub:a/b@"])
def test_malformed_hub_ids_are_refused_clearly(bad: str) -> None:
    if bad.endswith("@"):  # an empty revision means main
        assert hub.parse_hub_id(bad) == ("a/b", "main")
        return
    with pytest.raises(ValueError, match="hf-hub:<org>/<name>|branch, tag or commit"):
        hub.parse_hub_id(bad)


def test_a_bare_repository_name_is_pointed_to_its_hub_id() -> None:
    with pytest.raises(FileNotFoundError, match="hf-hub:facebook/sam-vit-base"):
        samclip.load_sam("facebook/sam-vit-base")


def test_hub_ids_name_a_repository_and_revision(tmp_path: Path) -> None:
    assert hub.parse_hub_id("hf-hub:facebook/sam-vit-base") == ("facebook/sam-vit-base", "main")
    assert hub.parse_hub_id("hf-hub:laion/CLIP-ViT-B-16@refs/pr/3") == ("laion/CLIP-ViT-B-16", "refs/pr/3")
    folder = hub.repo_folder(tmp_path, "laion/CLIP-ViT-B-16", "refs/pr/3")
    assert folder == tmp_path / "hf" / "laion--CLIP-ViT-B-16" / "refs%2Fpr%2F3"


# ------------------------------------------------------------------------------------------- models
def test_hf_sam_repository_loads_as_from_its_folder_then_offline(fake_hub: FakeHub, hf_sam,  # noqa: ANN001
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    fake_hub.add("facebook/sam-tiny", hf_sam.folder)
    model = samclip.load_sam("hf-hub:facebook/sam-tiny")
    _same_weights(model, samclip.load_sam(hf_sam.folder))
    folder = hub.repo_folder(pretrained.cache_dir(), "facebook/sam-tiny", "main")
    record = json.loads((folder / hub.MARKER).read_text())
    assert set(record["files"]) == {"config.json", "model.safetensors"}
    assert record["commit"] == "c0ffee"
    assert len(record["files"]["model.safetensors"]) == 64  # its SHA-256 was checked
    assert not list(folder.glob("*.part")) and not list(folder.glob(".*.part"))

    fake_hub.server.shutdown()  # no network from here on: the complete folder is enough
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _same_weights(samclip.load_sam("hf-hub:facebook/sam-tiny"), model)
    assert pretrained.is_available("sam", "hf-hub:facebook/sam-tiny")


def test_hf_clip_repository_brings_its_tokenizer(fake_hub: FakeHub, hf_clip) -> None:  # noqa: ANN001
    fake_hub.add("openai/clip-tiny", hf_clip.folder)
    model = samclip.load_clip("hf-hub:openai/clip-tiny")
    reference = samclip.load_clip(hf_clip.folder)
    _same_weights(model, reference)
    texts = ["a red star", "a small blue ring"]
    assert torch.equal(model.tokenizer(texts), reference.tokenizer(texts))
    assert fake_hub.gets("open_clip_model.safetensors") == 0  # looked for (HEAD), not found, not fetched


def test_open_clip_repository_without_tokenizer_gets_openai_bpe(fake_hub: FakeHub, hf_clip,  # noqa: ANN001
                                                                 tmp_path: Path) -> None:
    clip = samclip.load_clip(hf_clip.folder)  # 64-wide heads: the architecture is read from the shapes
    fake_hub.add("timm/clip-tiny.openai", _open_clip_folder(clip, tmp_path / "oc", {"model_cfg": {"quick_gelu": True}}))
    fake_hub.add(hub.DEFAULT_CLIP_TOKENIZER_REPO, _tokenizer_repo(clip.tokenizer, tmp_path / "tok"))
    model = samclip.load_clip("hf-hub:timm/clip-tiny.openai")
    _same_weights(model, clip)
    assert model.config.vision.act == "quick_gelu"
    texts = ["a green heart", "a striped cross"]
    assert torch.equal(model.tokenizer(texts), clip.tokenizer(texts))
    folder = hub.repo_folder(pretrained.cache_dir(), "timm/clip-tiny.openai", "main")
    assert json.loads((folder / hub.MARKER).read_text())["tokenizer_from"] == hub.DEFAULT_CLIP_TOKENIZER_REPO


def test_merged_model_repository(fake_hub: FakeHub, tmp_path: Path) -> None:
    model = tiny_merged_model(seed=1)
    samclip.save_pretrained(model, tmp_path / "merged")
    fake_hub.add("me/samclip-tiny", tmp_path / "merged", revision="v1")
    loaded = samclip.load_model("hf-hub:me/samclip-tiny@v1")
    _same_weights(loaded, model)
    assert loaded.tokenizer is not None


def test_registered_hub_name_uses_its_preset(fake_hub: FakeHub, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A registered name fixes the architecture its weights were published for, which the files alone may
    not tell (here: neither the head count of a 32-wide tower nor QuickGELU)."""
    clip = samclip.create_clip("clip-tiny").eval()
    repo = _open_clip_folder(clip, tmp_path / "oc")
    fake_hub.add("org/tiny-openai", repo)
    fake_hub.add(hub.DEFAULT_CLIP_TOKENIZER_REPO, _tokenizer_repo(tiny_clip().tokenizer, tmp_path / "tok"))
    entries = dict(pretrained.registry())
    entries[("clip", "tiny-openai")] = pretrained.PretrainedEntry("clip", preset="clip-tiny", hf_repo="org/tiny-openai")
    monkeypatch.setattr(pretrained, "_REGISTRY", entries)
    model = samclip.load_clip("tiny-openai")
    assert model.config.vision.act == "quick_gelu" and model.config == clip.config
    _same_weights(model, clip)
    with pytest.raises(samclip.CheckpointError, match="head count"):
        samclip.load_clip(repo)


def test_release_url_entry_checks_its_hashes(fake_hub: FakeHub, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    sam = samclip.create_sam("sam-tiny").eval()
    files = tmp_path / "release"
    files.mkdir()
    from samclip.convert import to_segment_anything

    torch.save(to_segment_anything(sam.state_dict()), files / "sam_tiny.pth")
    fake_hub.add("dl/release", files)
    digest = hashlib.sha256((files / "sam_tiny.pth").read_bytes()).hexdigest()
    url = f"{fake_hub.url}/storage/dl/release/main/sam_tiny.pth"
    entries = dict(pretrained.registry())
    md5 = hashlib.md5((files / "sam_tiny.pth").read_bytes(), usedforsecurity=False).hexdigest()
    wrong = "0" * 8 if digest[0] != "0" else "1" * 8
    entries[("sam", "bad")] = pretrained.PretrainedEntry("sam", "bad.pth", url, wrong)
    entries[("sam", "bad-md5")] = pretrained.PretrainedEntry("sam", "bad.pth", url, md5=md5[::-1])
    entries[("sam", "good")] = pretrained.PretrainedEntry("sam", "good.pth", url, digest[:6], "sam-tiny", md5=md5)
    monkeypatch.setattr(pretrained, "_REGISTRY", entries)
    with pytest.raises(hub.DownloadError, match="SHA-256"):
        samclip.load_sam("bad")
    with pytest.raises(hub.DownloadError, match="MD5"):
        samclip.load_sam("bad-md5")
    assert [p.name for p in pretrained.cache_dir().iterdir()] == ["bad.pth.lock"]  # nothing half-written or wrong
    _same_weights(samclip.load_sam("good"), sam)
    assert (pretrained.cache_dir() / "good.pth").is_file()


# ------------------------------------------------------------------------------------------- errors
def test_corrupt_or_cut_downloads_leave_nothing_and_a_retry_resumes(fake_hub: FakeHub, hf_sam) -> None:  # noqa: ANN001
    fake_hub.add("facebook/sam-tiny", hf_sam.folder)
    folder = hub.repo_folder(pretrained.cache_dir(), "facebook/sam-tiny", "main")
    fake_hub.corrupt.add("model.safetensors")
    with pytest.raises(hub.DownloadError, match="SHA-256"):
        samclip.load_sam("hf-hub:facebook/sam-tiny")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json"]  # no weights, no marker, no temp file
    fake_hub.corrupt.clear()
    fake_hub.cut.add("model.safetensors")
    with pytest.raises(hub.DownloadError):
        samclip.load_sam("hf-hub:facebook/sam-tiny")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json"]
    fake_hub.cut.clear()
    samclip.load_sam("hf-hub:facebook/sam-tiny")
    assert fake_hub.gets("config.json") == 1  # kept from the first try: its hash matched
    assert hub.is_complete(folder)


def test_refusals_say_what_to_do(fake_hub: FakeHub, hf_sam, tmp_path: Path,  # noqa: ANN001
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    fake_hub.add("facebook/sam-tiny", hf_sam.folder)
    fake_hub.gated["facebook/sam-tiny"] = "secret"
    with pytest.raises(hub.DownloadError, match="gated or private.*HF_TOKEN"):
        samclip.load_sam("hf-hub:facebook/sam-tiny")
    monkeypatch.setenv("HF_TOKEN", "secret")
    samclip.load_sam("hf-hub:facebook/sam-tiny")

    with pytest.raises(hub.DownloadError, match="no such repository"):
        samclip.load_sam("hf-hub:nobody/nothing")
    with pytest.raises(hub.DownloadError, match="no revision 'v9'"):
        samclip.load_sam("hf-hub:facebook/sam-tiny@v9")
    (tmp_path / "empty").mkdir()
    fake_hub.add("org/empty", tmp_path / "empty")
    with pytest.raises(hub.DownloadError, match="no SAM model files.*config.json"):
        samclip.load_sam("hf-hub:org/empty")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(hub.DownloadError, match="HF_HUB_OFFLINE.*samclip download"):
        samclip.load_clip("hf-hub:org/other")
    with pytest.raises(hub.DownloadError, match="--kind model`"):  # the command line's word for a merged model
        samclip.load_model("hf-hub:org/other")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.delenv("HF_HUB_OFFLINE")
    with pytest.raises(hub.DownloadError, match="cannot reach"):
        samclip.load_clip("hf-hub:org/other")


def test_concurrent_fetches_of_one_repository_download_each_file_once(fake_hub: FakeHub, hf_sam) -> None:  # noqa: ANN001
    """The ranks of a torchrun job load the same teacher at once: they take turns on a lock file, the first
    downloads, the others find the folder complete."""
    import concurrent.futures

    fake_hub.add("facebook/sam-tiny", hf_sam.folder)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        folders = list(pool.map(lambda _: pretrained.resolve("sam", "hf-hub:facebook/sam-tiny"), range(4)))
    assert len(set(folders)) == 1 and hub.is_complete(folders[0])
    assert fake_hub.gets("config.json") == 1 and fake_hub.gets("model.safetensors") == 1


def test_cli_download_and_list(fake_hub: FakeHub, hf_sam, capsys: pytest.CaptureFixture) -> None:  # noqa: ANN001
    fake_hub.add("facebook/sam-tiny", hf_sam.folder)
    assert cli_main(["download", "hf-hub:facebook/sam-tiny"]) == 2
    assert "--kind" in capsys.readouterr().err
    assert cli_main(["download", "hf-hub:facebook/sam-tiny", "--kind", "sam"]) == 0
    path = Path(capsys.readouterr().out.strip())
    assert hub.is_complete(path) and (path / "model.safetensors").is_file()
    assert cli_main(["download", "hf-hub:nobody/nothing", "--kind", "clip"]) == 2
    assert "no such repository" in capsys.readouterr().err
    assert cli_main(["download", "--list"]) == 0
    out = capsys.readouterr().out
    assert "clip-vit-l-14-datacomp" in out and "hf-hub:laion/CLIP-ViT-L-14-DataComp.XL-s13B-b90K" in out
    heads = sum(n for (m, _), n in fake_hub.requests.items() if m == "HEAD")
    assert cli_main(["download", "--force", "hf-hub:facebook/sam-tiny", "--kind", "sam"]) == 0
    assert sum(n for (m, _), n in fake_hub.requests.items() if m == "HEAD") > heads  # asked the hub again
    assert fake_hub.gets("config.json") == 1  # but the unchanged files were not fetched again
    shutil.rmtree(path)


def test_registry_entries_are_well_formed() -> None:
    """Every hub entry parses; segment-anything's file names carry the first digits of the MD5 we check."""
    from samclip.models import clip_preset, sam_preset

    for (kind, name), entry in pretrained.registry().items():
        assert entry.kind == kind
        if entry.hf_repo:
            hub.parse_hub_id(entry.source)
        if entry.md5:
            assert len(entry.md5) == 32 and entry.md5[:6] in entry.file, name
        if entry.preset:
            (sam_preset if kind == "sam" else clip_preset)(entry.preset)
    assert pretrained.preset_for("clip", "clip-vit-b-16") == "clip-vit-b-16"
    assert pretrained.preset_for("clip", "clip-vit-l-14-datacomp") is None


def test_sharded_weights_are_fetched_shard_by_shard(fake_hub: FakeHub, hf_sam, tmp_path: Path) -> None:  # noqa: ANN001
    """A repository with ``model.safetensors.index.json`` (large models): every shard it names is fetched, and the
    loaded model equals the unsharded one; an index naming a missing shard is a clear error."""
    from safetensors.torch import load_file

    state = load_file(str(hf_sam.folder / "model.safetensors"))
    keys = sorted(state)
    repo = tmp_path / "sharded"
    repo.mkdir()
    shutil.copy(hf_sam.folder / "config.json", repo / "config.json")
    halves = {"model-00001-of-00002.safetensors": keys[: len(keys) // 2],
              "model-00002-of-00002.safetensors": keys[len(keys) // 2 :]}
    for name, part in halves.items():
        save_file({k: state[k].contiguous() for k in part}, str(repo / name))
    index = {"metadata": {}, "weight_map": {k: name for name, part in halves.items() for k in part}}
    (repo / "model.safetensors.index.json").write_text(json.dumps(index))
    fake_hub.add("facebook/sam-sharded", repo)
    _same_weights(samclip.load_sam("hf-hub:facebook/sam-sharded"), samclip.load_sam(hf_sam.folder))
    folder = hub.repo_folder(pretrained.cache_dir(), "facebook/sam-sharded", "main")
    assert set(json.loads((folder / hub.MARKER).read_text())["files"]) == {
        "config.json", "model.safetensors.index.json", *halves}
    assert oct((folder / "model-00001-of-00002.safetensors").stat().st_mode & 0o777) == "0o644"
    (repo / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(hub.DownloadError, match="names the shard model-00002-of-00002.safetensors"):
        hub.fetch("sam", "hf-hub:facebook/sam-sharded", pretrained.cache_dir(), force=True)


def test_a_file_system_without_locks_still_fetches(fake_hub: FakeHub, hf_sam, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    def no_locks(fd: int, op: int) -> None:
        raise OSError(38, "Function not implemented")

    monkeypatch.setattr(hub.fcntl, "flock", no_locks)
    fake_hub.add("facebook/sam-tiny", hf_sam.folder)
    assert hub.is_complete(pretrained.resolve("sam", "hf-hub:facebook/sam-tiny"))


def test_unreadable_downloads_are_never_marked_complete(fake_hub: FakeHub, hf_sam, tmp_path: Path) -> None:  # noqa: ANN001
    """A repository serving a config that is not JSON, a safetensors file with a garbage header, or a weight index
    whose weight_map is not a name -> shard map: the fetch fails naming the file, and nothing counts as cached."""
    import shutil

    cases = {
        "org/badjson": ("config.json", b"{not json", "config.json is not a readable JSON file"),
        "org/badweights": ("model.safetensors", b"\xff" * 64, "model.safetensors is not a readable safetensors"),
    }
    for repo, (name, data, message) in cases.items():
        folder = tmp_path / repo.replace("/", "_")
        shutil.copytree(hf_sam.folder, folder)
        (folder / name).write_bytes(data)
        fake_hub.add(repo, folder)
        with pytest.raises(hub.DownloadError, match=message):
            samclip.load_sam(f"hf-hub:{repo}")
        with pytest.raises(hub.DownloadError, match=message):  # again: the first attempt left nothing "complete"
            samclip.load_sam(f"hf-hub:{repo}")
    folder = tmp_path / "index"
    folder.mkdir()
    shutil.copy(hf_sam.folder / "config.json", folder / "config.json")
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": ["a", "b"]}))
    fake_hub.add("org/index", folder)
    with pytest.raises(hub.DownloadError, match="weight_map must map tensor names to shard file names"):
        samclip.load_sam("hf-hub:org/index")


def test_environment_variables_that_cannot_work_are_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from samclip import pretrained

    monkeypatch.setenv("HF_ENDPOINT", "notaurl")
    with pytest.raises(hub.DownloadError, match="HF_ENDPOINT='notaurl' is not an http"):
        hub.endpoint()
    monkeypatch.setenv("HF_ENDPOINT", "")
    assert hub.endpoint() == hub.DEFAULT_ENDPOINT
    (tmp_path / "f").write_text("a file")
    monkeypatch.setenv("SAMCLIP_CACHE", str(tmp_path / "f"))
    with pytest.raises(ValueError, match="SAMCLIP_CACHE=.* is a file"):
        pretrained.cache_dir()
    monkeypatch.setenv("SAMCLIP_CACHE", "")  # empty: unset, not the current folder
    assert pretrained.cache_dir() == Path.home() / ".cache" / "samclip"
