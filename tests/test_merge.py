"""The merge pipeline on tiny random teachers: stages, gradients, distributed equality, kill + resume."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import samclip
from samclip.checkpoint import load_safetensors
from samclip.merge.config import CONFIG_DIR, load_config
from samclip.merge.run import build_streams, build_student
from samclip.merge.trainer import MergeTrainer, clip_distillation_loss, sam_distillation_loss
from samclip.models import CLIP, SamClip, clip_preset
from samclip.tokenizer import ClipTokenizer

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def teacher_dirs(tmp_path_factory) -> dict[str, Path]:  # noqa: ANN001
    """Tiny random teachers in our format, and the same weights in the official formats."""
    root = tmp_path_factory.mktemp("teachers")
    torch.manual_seed(0)
    sam = samclip.create_sam("sam-tiny")
    samclip.save_pretrained(sam, root / "sam")
    torch.save(sam.state_dict(), root / "sam_vit_tiny.pth")  # segment-anything layout
    tok = ClipTokenizer.train(["a red star", "a blue ring next to a green square", "a photo of a heart"] * 5,
                              vocab_size=100, context_length=16)
    base = clip_preset("clip-tiny")
    # 64-wide towers so the OpenAI-layout copy can be read without a config (heads = width // 64)
    cfg = base.replace(
        vision=base.vision.replace(width=64, heads=1),
        text=base.text.replace(vocab_size=tok.vocab_size, sot_token_id=tok.sot_token_id,
                               eot_token_id=tok.eot_token_id, width=64, heads=1),
    )
    clip = CLIP.from_config(cfg)
    clip.tokenizer = tok
    samclip.save_pretrained(clip, root / "clip")
    sd = clip.state_dict()
    openai = {(k[len("text."):] if k.startswith("text.") else k): v for k, v in sd.items()}
    torch.save(openai, root / "clip_openai.pt")  # OpenAI layout (text keys at the top level)
    tok.save(root / "tokenizer.json")
    return {"root": root}


def _overrides(teacher_dirs: dict[str, Path], out: Path, **extra: str) -> list[str]:
    root = teacher_dirs["root"]
    base = {
        "out": str(out), "bf16": "false", "threads": "1", "checkpoint_every": "2",
        "teachers.sam": str(root / "sam"), "teachers.clip": str(root / "clip"),
        "head.mlp_hidden": "16",
        "data.clip_images": "48", "data.sam_images": "12", "data.clip_render_size": "64",
        "data.clip_sizes": "32,64", "data.stage3_sizes": "32,64,128", "data.clip_batch": "8",
        "data.sam_batch": "2", "data.prompts_per_image": "2", "data.cache_teachers": "false",
        "stage1.steps": "2", "stage2.steps": "4", "stage3.steps": "2",
        "stage1.warmup": "1", "stage2.warmup": "1", "stage3.warmup": "1", "eval.every": "0",
        # pinned so the tests do not follow the embedded default's tuning
        "data.clip_single_fraction": "0", "stage1.lr": "8e-4", "stage2.lr": "4e-4", "stage3.lr": "8e-4",
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def _trainer(teacher_dirs: dict[str, Path], out: Path, **extra: str) -> MergeTrainer:
    cfg = load_config(None, _overrides(teacher_dirs, out, **extra))
    model, teachers = build_student(cfg)
    clip_stream, sam_stream = build_streams(cfg, model.img_size, progress=False)
    return MergeTrainer(cfg, model, teachers, clip_stream, sam_stream)


def test_clip_head_blocks_start_as_the_last_backbone_block(teacher_dirs, tmp_path) -> None:  # noqa: ANN001
    tr = _trainer(teacher_dirs, tmp_path)
    last = tr.model.backbone.blocks[-1].state_dict()
    assert len(tr.model.clip_head.blocks) == 3
    for blk in tr.model.clip_head.blocks:
        for k, v in blk.state_dict().items():
            assert torch.equal(v, last[k]), k
    sam_t = samclip.load_sam(teacher_dirs["root"] / "sam")
    for k, v in sam_t.state_dict().items():
        assert torch.equal(tr.model.sam.state_dict()[k], v), k


def test_stage1_changes_only_the_clip_head(teacher_dirs, tmp_path) -> None:  # noqa: ANN001
    tr = _trainer(teacher_dirs, tmp_path, **{"stage2.steps": "0", "stage3.steps": "0"})
    before = {k: v.clone() for k, v in tr.model.state_dict().items()}
    tr.run()
    after = tr.model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("clip_head.") for k in changed), sorted(changed)[:5]


def test_stage1_token_cache_equals_the_online_backbone_pass(teacher_dirs, tmp_path) -> None:  # noqa: ANN001
    """Stage I with the frozen-backbone token cache trains the head exactly as without it (fp32)."""
    runs = {}
    for flag in ("false", "true"):
        torch.manual_seed(0)  # the same random embedding-MLP init in both students
        tr = _trainer(teacher_dirs, tmp_path / flag, **{"stage2.steps": "0", "stage3.steps": "0",
                                                      "data.stage1_token_cache": flag})
        tr._configure(1)
        assert bool(tr.token_cache) == (flag == "true")
        ids = np.arange(6)
        with torch.no_grad():
            loss = clip_distillation_loss(tr.model, tr.teachers, tr.clip_stream, ids, 64, backbone_grad=False,
                                          bf16=False, cached_tokens=tr.token_cache.get(64))
        tr.opt = None
        tr.run()
        runs[flag] = (loss, {k: v.clone() for k, v in tr.model.clip_head.state_dict().items()})
    assert torch.allclose(runs["false"][0], runs["true"][0], atol=1e-5)
    _assert_close(runs["false"][1], runs["true"][1], atol=1e-4)


def test_stage3_token_cache_holds_a_prefix_at_every_size_and_draws_from_it(teacher_dirs, tmp_path) -> None:  # noqa: ANN001
    """Stage III's cache: the first N images at each stage-III size, equal to the online backbone's tokens;
    its batches only draw those N (so nothing uncached is looked up) and only the CLIP head changes."""
    tr = _trainer(teacher_dirs, tmp_path, **{"data.stage3_token_cache_images": "10"})
    tr._configure(3)
    assert tr.token_cache_images == 10 and sorted(tr.token_cache) == [32, 64, 128]
    assert [tuple(t.shape[:3]) for t in tr.token_cache.values()] == [(10, 2, 2), (10, 4, 4), (10, 8, 8)]
    ids = np.array([0, 3, 9])
    with torch.no_grad():
        online = clip_distillation_loss(tr.model, tr.teachers, tr.clip_stream, ids, 128, backbone_grad=False,
                                        bf16=False)
        cached = clip_distillation_loss(tr.model, tr.teachers, tr.clip_stream, ids, 128, backbone_grad=False,
                                        bf16=False, cached_tokens=tr.token_cache[128])
    assert torch.allclose(online, cached, atol=1e-5)
    seen = []
    real = tr.clip_stream.images
    tr.clip_stream.images = lambda idx: (seen.extend(int(i) for i in idx), real(idx))[1]
    before = {k: v.clone() for k, v in tr.model.state_dict().items()}
    for step in range(3):
        tr.train_step(3, step)
    assert seen and max(seen) < 10
    changed = {k for k, v in tr.model.state_dict().items() if not torch.equal(before[k], v)}
    assert changed and all(k.startswith("clip_head.") for k in changed)
    assert _trainer(teacher_dirs, tmp_path / "off")._token_cache_images(3) == 0


def test_stage2_gradients_reach_every_trainable_and_no_frozen_parameter(teacher_dirs, tmp_path) -> None:  # noqa: ANN001
    tr = _trainer(teacher_dirs, tmp_path)
    tr._configure(2)
    m = tr.model
    ids = np.arange(4)
    clip_distillation_loss(m, tr.teachers, tr.clip_stream, ids, 64, backbone_grad=True, bf16=False).backward()
    (10 * sam_distillation_loss(m, tr.teachers, tr.sam_stream, np.arange(2), bf16=False)).backward()
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in m.named_parameters()
                         if n.startswith(("sam.image_encoder.", "sam.mask_decoder.", "clip_head."))}
    no_grad = sorted(n for n, p in m.named_parameters() if p.requires_grad and p.grad is None)
    assert no_grad == [], no_grad
    frozen_with_grad = sorted(n for n, p in m.named_parameters() if not p.requires_grad and p.grad is not None)
    assert frozen_with_grad == []
    teachers_with_grad = [n for n, p in tr.teachers.sam.named_parameters() if p.grad is not None]
    assert teachers_with_grad == []


def test_stage2_decays_weight_matrices_only_and_keeps_the_lr_multipliers(teacher_dirs, tmp_path) -> None:  # noqa: ANN001
    tr = _trainer(teacher_dirs, tmp_path)
    tr._configure(2)
    names = {id(p): n for n, p in tr.model.named_parameters()}
    decayed = {names[id(p)]: g["lr_mult"] for g in tr.opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    kept = {names[id(p)]: g["lr_mult"] for g in tr.opt.param_groups if g["weight_decay"] == 0 for p in g["params"]}
    assert set(decayed) | set(kept) == {n for n, p in tr.model.named_parameters() if p.requires_grad}
    assert not set(decayed) & set(kept)
    for name in kept:  # biases, norm gains, position tables, learned tokens
        assert name.endswith(("bias", "pos_embed", "rel_pos_h", "rel_pos_w", "token.weight", "tokens.weight")) \
            or ".norm" in name or "neck.1" in name or "neck.3" in name or "upscaling.1" in name, name
    assert "sam.mask_decoder.iou_token.weight" in kept and "clip_head.blocks.0.attn.rel_pos_h" in kept
    assert "sam.image_encoder.pos_embed" in kept and "clip_head.norm.weight" in kept
    assert "sam.image_encoder.blocks.0.attn.qkv.weight" in decayed and "clip_head.mlp.0.weight" in decayed
    assert decayed["sam.image_encoder.blocks.0.mlp.lin1.weight"] == tr.cfg.backbone_lr_mult
    assert decayed["clip_head.blocks.0.mlp.lin1.weight"] == kept["clip_head.blocks.0.norm1.weight"] == 1.0
    # one step without gradients: only the decayed weights move (AdamW's decoupled decay)
    before = {k: v.clone() for k, v in tr.model.state_dict().items()}
    for p in tr.trainable():
        p.grad = torch.zeros_like(p)
    for g in tr.opt.param_groups:
        g["lr"] = 0.1
    tr.opt.step()
    moved = {k for k, v in tr.model.state_dict().items() if not torch.equal(v, before[k])}
    assert moved == {n for n in decayed if before[n].abs().sum() > 0}
    # decay_all_parameters: the stage's groups as they are, every parameter decayed
    tr = _trainer(teacher_dirs, tmp_path, decay_all_parameters="true")
    tr._configure(2)
    assert [(g["lr_mult"], g["weight_decay"]) for g in tr.opt.param_groups] == [(1.0, 0.05), (0.1, 0.05)]


def test_student_sam_head_equals_teacher_at_init(teacher_dirs, tmp_path) -> None:  # noqa: ANN001
    """At initialisation the student's SAM head IS the teacher: the IoU term is exactly 0 and the
    mask term equals the teacher-vs-teacher focal+dice floor."""
    tr = _trainer(teacher_dirs, tmp_path)
    m = tr.model.eval()
    with torch.no_grad():
        loss = sam_distillation_loss(m, tr.teachers, tr.sam_stream, np.arange(2), bf16=False, iou_weight=1.0)
        loss_no_iou = sam_distillation_loss(m, tr.teachers, tr.sam_stream, np.arange(2), bf16=False, iou_weight=0.0)
    assert torch.isclose(loss, loss_no_iou, atol=1e-6)


def _run_cli(args: list[str], env_extra: dict[str, str] | None = None, **kw) -> subprocess.Popen:  # noqa: ANN003
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    return subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **kw)


def _final_weights(out: Path) -> dict[str, torch.Tensor]:
    return load_safetensors(out / "model" / "model.safetensors")


def _assert_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float) -> None:
    assert a.keys() == b.keys()
    worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    assert worst <= atol, worst


@pytest.mark.slow
def test_two_process_torchrun_matches_one_process(teacher_dirs, tmp_path) -> None:  # noqa: ANN001
    one = tmp_path / "one"
    two = tmp_path / "two"
    cmd = [sys.executable, "-m", "samclip.cli", "merge", "--no-eval"]
    p = _run_cli(cmd + sum((["--set", s] for s in _overrides(teacher_dirs, one)), []))
    out1 = p.communicate(timeout=300)[0].decode()
    assert p.returncode == 0, out1[-3000:]
    # the summary says where the wall time went; the log has each stage's set-up
    summary = json.loads((one / "summary.json").read_text())
    assert set(summary["setup_s"]) == {"models", "streams", "evaluator"}
    assert summary["bf16"] is False and summary["machine"]["torch"] == torch.__version__  # where the run was made
    parts = sum(summary["setup_s"].values()) + summary["train_s"] + summary["final_eval_and_save_s"]
    assert 0 < parts <= summary["wall_s"] + 1e-6
    events = [json.loads(line).get("event") for line in (one / "log.jsonl").read_text().splitlines()]
    assert {"setup stage 1", "setup stage 2"} <= set(events)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                "-m", "samclip.cli", "merge", "--no-eval"]
    p = _run_cli(torchrun + sum((["--set", s] for s in _overrides(teacher_dirs, two)), []))
    out2 = p.communicate(timeout=300)[0].decode()
    assert p.returncode == 0, out2[-3000:]
    w1, w2 = _final_weights(one), _final_weights(two)
    # Same global batch, so the averaged gradients agree to float rounding (the shards run matmuls of
    # another size). AdamW turns rounding noise on near-zero gradients into sign flips of at most one
    # lr-sized update, so: nearly all elements agree to 1e-5 and none differs by more than ~2 x lr.
    diffs = torch.cat([(w1[k].float() - w2[k].float()).abs().flatten() for k in w1])
    assert (diffs <= 1e-5).float().mean() > 0.99, (diffs > 1e-5).float().mean()
    assert diffs.max() <= 2e-3, diffs.max()
    # and the run really trained something
    init = samclip.load_sam(teacher_dirs["root"] / "sam").state_dict()
    assert not torch.equal(w1["sam.image_encoder.blocks.0.attn.qkv.weight"],
                           init["image_encoder.blocks.0.attn.qkv.weight"])


@pytest.mark.slow
def test_kill9_mid_stage2_then_resume_equals_uninterrupted(teacher_dirs, tmp_path) -> None:  # noqa: ANN001
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    extra = {"checkpoint_every": "1", "stage2.steps": "6"}
    cmd = [sys.executable, "-m", "samclip.cli", "merge", "--no-eval"]
    p = _run_cli(cmd + sum((["--set", s] for s in _overrides(teacher_dirs, ref, **extra)), []))
    out = p.communicate(timeout=300)[0].decode()
    assert p.returncode == 0, out[-3000:]

    args = cmd + sum((["--set", s] for s in _overrides(teacher_dirs, killed, **extra)), [])
    p = _run_cli(args)
    latest = killed / "checkpoints" / "latest"
    deadline = time.time() + 240
    while time.time() < deadline:
        if latest.exists() and latest.read_text().startswith("s2-000000") and latest.read_text() >= "s2-0000003":
            break
        if p.poll() is not None:
            pytest.fail("run finished before it could be killed: " + p.stdout.read().decode()[-2000:])
        time.sleep(0.02)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    # every visible checkpoint is complete; temp folders are hidden
    for ck in (killed / "checkpoints").iterdir():
        if ck.is_dir() and not ck.name.startswith("."):
            assert (ck / "model.safetensors").exists() and (ck / "state.json").exists(), ck
    assert not (killed / "model").exists()
    p = _run_cli(args + ["--resume"])
    out = p.communicate(timeout=300)[0].decode()
    assert p.returncode == 0, out[-3000:]
    _assert_close(_final_weights(ref), _final_weights(killed), atol=0.0)
    assert not [d for d in (killed / "checkpoints").glob(".*") if d.is_dir()]  # no leftovers after resume


def test_pipeline_runs_from_official_formats(teacher_dirs, tmp_path) -> None:  # noqa: ANN001
    """segment-anything .pth + OpenAI-layout .pt (+ tokenizer.json): 2 training steps work."""
    root = teacher_dirs["root"]
    tr = _trainer(teacher_dirs, tmp_path, **{
        "teachers.sam": str(root / "sam_vit_tiny.pth"), "teachers.clip": str(root / "clip_openai.pt"),
        "teachers.clip_tokenizer": str(root / "tokenizer.json"),
        "stage1.steps": "1", "stage2.steps": "1", "stage3.steps": "0",
    })
    before = tr.model.backbone.blocks[0].attn.qkv.weight.clone()
    state = tr.run()
    assert state.stage == 4  # all stages done
    assert isinstance(tr.model, SamClip)
    assert not torch.equal(before, tr.model.backbone.blocks[0].attn.qkv.weight)


def test_pipeline_runs_on_real_data_folders(teacher_dirs, tmp_path) -> None:  # noqa: ANN001
    """data.source = folders: D_CLIP from a plain tar shard, D_SAM from SA-1B pairs, read on demand (with the
    teacher cache on); all stages run and train."""
    from test_real_data import write_real_data

    clip_dir, sam_dir = write_real_data(tmp_path / "data")
    tr = _trainer(teacher_dirs, tmp_path / "run", **{
        "data.source": "folders", "data.clip_dir": str(clip_dir), "data.sam_dir": str(sam_dir),
        "data.cache_teachers": "true", "stage1.steps": "1", "stage2.steps": "2", "stage3.steps": "1",
    })
    assert len(tr.clip_stream) == 24 and len(tr.sam_stream) == 6
    before = tr.model.backbone.blocks[0].attn.qkv.weight.clone()
    assert tr.run().stage == 4
    assert not torch.equal(before, tr.model.backbone.blocks[0].attn.qkv.weight)


def test_bad_config_is_a_clear_cli_error(tmp_path) -> None:  # noqa: ANN001
    p = _run_cli([sys.executable, "-m", "samclip.cli", "merge", "--set", "stage2.bogus=1"])
    out = p.communicate(timeout=120)[0].decode()
    assert p.returncode == 2 and "unknown config key" in out and "Traceback" not in out
    bad = tmp_path / "bad.toml"
    bad.write_text("this is = = not toml")
    p = _run_cli([sys.executable, "-m", "samclip.cli", "merge", "--config", str(bad)])
    out = p.communicate(timeout=120)[0].decode()
    assert p.returncode == 2 and "invalid TOML" in out and "Traceback" not in out


@pytest.mark.parametrize("override, match", [
    ("stage2.steps=-5", "stage2.steps = -5: must be >= 0"),
    ("stage1.lr=nan", "stage1.lr = nan: must be > 0"),
    ("data.clip_batch=0", "data.clip_batch = 0: must be >= 1"),
    ("data.clip_single_fraction=2", r"must be in \[0, 1\]"),
    ("lambda_sam=inf", "lambda_sam = inf"),
    ("checkpoint_every=0", "checkpoint_every = 0"),
    ("data.clip_sizes=128,-64", "data.clip_sizes = -64"),
    ("out=", "out is empty"),
    ("seed=-1", "seed = -1"),
    ("data.region_crop_pad=1e308", "data.region_crop_pad = 1e"),
    ("data.clip_sizes=a", "must be a list of integers"),
    ("stage1.steps=2.5", "stage1.steps must be an integer"),
])
def test_out_of_range_knobs_fail_at_load(override: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        load_config(CONFIG_DIR / "tiny-synthetic.toml", [override])


@pytest.mark.parametrize("toml, match", [
    ("[data]\nclip_sizes = [\"a\"]", "data.clip_sizes must be a list of integers"),
    ("[data]\nclip_sizes = [[128]]", "data.clip_sizes must be a list of integers"),
    ("[stage1]\nsteps = 2.7", "stage1.steps must be an integer, got 2.7"),
    ("[stage1]\nsteps = true", "stage1.steps must be an integer, got True"),
    ("[data]\nclip_batch = 64.9", "data.clip_batch must be an integer"),
    ("out = [1]", "out must be a string"),
    ("[teachers]\nsam = {a = 1}", "teachers.sam must be a string"),
    ("[stage1]\nlr = true", "stage1.lr must be a number"),
])
def test_toml_values_of_the_wrong_kind_fail_at_load(tmp_path, toml: str, match: str) -> None:  # noqa: ANN001
    """No silent truncation or str() of TOML values (steps = 2.7 was 2, out = [1] a folder named "[1]")."""
    path = tmp_path / "run.toml"
    path.write_text(toml + "\n")
    with pytest.raises(ValueError, match=re.escape(match)):
        load_config(path)


def test_toml_values_that_mean_the_same_are_taken(tmp_path) -> None:  # noqa: ANN001
    path = tmp_path / "run.toml"
    path.write_text("bf16 = false\n[data]\nclip_sizes = 128\n[stage1]\nsteps = 20.0\nlr = 1\n")
    cfg = load_config(path)
    assert (cfg.bf16, cfg.data.clip_sizes, cfg.stage1.steps, cfg.stage1.lr) == ("false", [128], 20, 1.0)


def test_sizes_and_outputs_are_checked_before_any_work(teacher_dirs, tmp_path) -> None:  # noqa: ANN001
    """A stage-III or region size off the patch grid, or a file where the run writes a folder: errors naming it,
    raised when the run is set up (not after stages I-II)."""
    from samclip.merge.run import check_outputs

    for knob in ("data.stage3_sizes", "data.region_sizes"):
        with pytest.raises(ValueError, match=f"config {knob} = .*multiple of the backbone's patch size"):
            _trainer(teacher_dirs, tmp_path / "a", **{knob: "33"})
    out = tmp_path / "b"
    (out / "checkpoints").parent.mkdir(parents=True)
    (out / "checkpoints").write_text("a file")
    with pytest.raises(ValueError, match="checkpoints exists and is not a folder"):
        check_outputs(load_config(None, _overrides(teacher_dirs, out)))


def test_resume_from_a_checkpoint_that_does_not_fit_is_a_clear_error(teacher_dirs, tmp_path) -> None:  # noqa: ANN001
    run = tmp_path / "run"
    tr = _trainer(teacher_dirs, run)
    final = tr.save_checkpoint()
    other = _trainer(teacher_dirs, run, **{"head.depth": "2"})
    with pytest.raises(ValueError, match="does not fit this config's model"):
        other._resume()
    (final / "state.json").write_text("garbage")
    with pytest.raises(ValueError, match="state.json is not a run state"):
        _trainer(teacher_dirs, run)._resume()
    (run / "checkpoints" / "latest").write_text("")
    with pytest.raises(ValueError, match="latest is empty"):
        _trainer(teacher_dirs, run)._resume()


def test_precision_and_device_knobs_resolve_or_fail_clearly(teacher_dirs, tmp_path) -> None:  # noqa: ANN001
    """bf16 / device: "auto" resolves for this machine, explicit values are kept, bad ones fail at load."""
    cfg = load_config(None, _overrides(teacher_dirs, tmp_path, bf16="auto", device="cpu"))
    assert cfg.torch_device == torch.device("cpu") and isinstance(cfg.use_bf16, bool)
    auto = load_config(None, _overrides(teacher_dirs, tmp_path, device="auto"))
    assert auto.torch_device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="bf16 must be"):
        load_config(None, _overrides(teacher_dirs, tmp_path, bf16="half"))
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            load_config(None, _overrides(teacher_dirs, tmp_path, device="cuda:0"))
    with pytest.raises(ValueError, match="device"):
        load_config(None, _overrides(teacher_dirs, tmp_path, device="tpu-ish"))
    tr = _trainer(teacher_dirs, tmp_path, device="cpu")
    assert all(p.device.type == "cpu" for p in tr.model.parameters())


def test_dense_validation_metric_reads_each_size_and_restores_the_config(teacher_dirs, tmp_path,  # noqa: ANN001
                                                                          monkeypatch) -> None:  # noqa: ANN001
    """The metric that picks ``semseg_size``: GT-mask labelling through ``Predictor.label_masks`` with the
    model's semseg pass at each size in turn; the model's config is left as it was."""
    from samclip.merge.run import SceneEvaluator
    from samclip.predictor import Predictor

    tr = _trainer(teacher_dirs, tmp_path)
    model = tr.model
    before = model.config
    seen = []
    real = Predictor.label_masks

    def spy(self, masks, labels, *a, **k):  # noqa: ANN001, ANN002, ANN003, ANN202
        seen.append((self.model.config.semseg_size, self._clip_state(None, "semseg").frame))
        return real(self, masks, labels, *a, **k)

    monkeypatch.setattr(Predictor, "label_masks", spy)
    ev = SceneEvaluator(4, 3, model.img_size, 64)
    acc = ev.mask_label_accuracy_by_size(model, [64, 128])
    assert sorted(acc) == [64, 128] and all(0.0 <= v <= 100.0 for v in acc.values())
    assert sorted(set(seen)) == [(64, 64), (128, 128)]
    assert model.config == before
    seen.clear()

    def spy_max(self, masks, labels, *a, **k):  # noqa: ANN001, ANN002, ANN003, ANN202
        assert k["pooling"] == "max"
        seen.append((self.model.config.label_size, self._clip_state(None, "label").frame))
        return real(self, masks, labels, *a, **k)

    monkeypatch.setattr(Predictor, "label_masks", spy_max)
    acc = ev.mask_label_accuracy_by_size(model, [64, 128], pooling="max")  # the metric that picks label_size
    assert sorted(acc) == [64, 128] and sorted(set(seen)) == [(64, 64), (128, 128)]
    assert model.config == before


def test_merge_keeps_classification_tta_only_when_it_is_better_on_val(teacher_dirs, tmp_path,  # noqa: ANN001
                                                                       monkeypatch) -> None:  # noqa: ANN001
    from samclip.merge.run import SceneEvaluator, choose_tta

    tr = _trainer(teacher_dirs, tmp_path, **{"head.tta_flip": "true", "head.tta_sizes": "32"})
    model, cfg = tr.model, tr.cfg
    model.config = model.config.replace(clip_size=64)
    ev = SceneEvaluator(6, 1, model.img_size, 64)
    real = ev.zero_shot_views(model, ((64, False),))
    assert real == ev.zero_shot_by_size(model, [64])[64]  # one view = the plain metric
    out = choose_tta(model, ev, cfg, single_view_top1=101.0)  # nothing beats 101%: not kept
    assert out["views"] == [[64, False], [64, True], [32, False], [32, True]] and not out["kept"]
    assert not model.config.has_tta
    monkeypatch.setattr(SceneEvaluator, "zero_shot_views", lambda self, m, views: 90.0)
    assert choose_tta(model, ev, cfg, single_view_top1=80.0)["kept"]
    assert model.config.tta_flip and model.config.tta_sizes == (32,) and model.config.clip_size == 64
    with pytest.raises(ValueError, match="multiples of the patch size"):
        _trainer(teacher_dirs, tmp_path / "bad", **{"head.tta_sizes": "50"})


def test_region_token_cover_and_masked_pooling() -> None:
    from samclip.merge.regions import token_cover
    from samclip.models import ClipHeadConfig
    from samclip.models.clip_head import ClipHead

    masks = torch.zeros(2, 64, 64, dtype=torch.bool)
    masks[0, :, :32] = True  # left half
    masks[1, 5:7, 40:42] = True  # 4 pixels: no patch 30% covered -> the most covered one
    sel = token_cover(masks, 4, 0.3)
    assert sel[0, :, :2].all() and not sel[0, :, 2:].any()
    assert sel[1].sum() == 1 and sel[1, 0, 2]
    ringed = token_cover(masks, 4, 0.3, context=1)  # one ring of neighbours, clipped at the grid's edge
    assert ringed[0, :, :3].all() and not ringed[0, :, 3].any()
    assert int(ringed[1].sum()) == 6 and ringed[1, :2, 1:4].all()
    encoder = samclip.create_sam("sam-tiny").config.image_encoder
    head = ClipHead(ClipHeadConfig(depth=1, mlp_hidden=8, out_dim=6), encoder)
    tokens = torch.randn(2, 4, 4, 32)
    assert torch.allclose(head.masked_pooled(tokens, torch.ones(2, 4, 4, dtype=torch.bool)), head.pooled(tokens))
    one = torch.zeros(2, 4, 4, dtype=torch.bool)
    one[:, 1, 2] = True  # a single token: its own per-patch embedding
    assert torch.allclose(head.masked_pooled(tokens, one), head.per_patch(tokens)[:, 1, 2], atol=1e-6)
    with pytest.raises(ValueError, match="at least one token"):
        head.masked_pooled(tokens, torch.zeros(2, 4, 4, dtype=torch.bool))


def test_region_distillation_trains_only_the_head_and_cached_equals_online(teacher_dirs, tmp_path) -> None:  # noqa: ANN001
    """region_weight > 0: stage I gets the region term (logged), still changes only the CLIP head, and the
    D_SAM token cache gives the same region loss as the online backbone pass."""
    losses = {}
    for flag in ("false", "true"):
        torch.manual_seed(0)
        tr = _trainer(teacher_dirs, tmp_path / flag, **{"stage2.steps": "0", "stage3.steps": "0",
                                                      "region_weight": "1.0", "data.region_images": "3",
                                                      "data.stage1_token_cache": flag})
        tr._configure(1)
        regions = tr.regions
        assert len(regions) > 0 and regions.targets.shape == (len(regions), tr.model.clip_head.config.out_dim)
        assert sorted(regions.select) == [32, 64] and regions.select[64].shape[1:] == (4, 4)
        if flag == "false":  # a region's target: the teacher on its mask's crop with data.region_crop_pad
            from samclip.inference import mask_crops

            i = int(regions.image_ids[0])
            inst = tr.sam_stream.instance_map(i)
            first = inst == next(k for k in np.unique(inst) if k > 0 and (inst == k).sum() >= 30)
            cfg_pad = tr.cfg.data.region_crop_pad
            for pad, same in ((cfg_pad, True), (cfg_pad + 0.5, False)):
                crop = mask_crops(tr.sam_stream.images(np.array([i]))[0], first[None], tr.teachers.clip_image_size,
                                  pad)
                want = tr.teachers.clip_image_embeddings(crop)[0]
                assert torch.allclose(regions.targets[0], want, atol=1e-5) == same, pad
        assert bool(tr.region_tokens) == (flag == "true")
        with torch.no_grad():
            losses[flag] = tr.region_terms(1, 0, 64)["l_region"]
        tr.opt = None
        before = {k: v.clone() for k, v in tr.model.state_dict().items()}
        tr.run()
        changed = {k for k, v in tr.model.state_dict().items() if not torch.equal(before[k], v)}
        assert changed and all(k.startswith("clip_head.") for k in changed)
        rows = [json.loads(x) for x in (tmp_path / flag / "log.jsonl").read_text().splitlines()]
        assert any("l_region" in r for r in rows)
    assert torch.allclose(losses["false"], losses["true"], atol=1e-5)
    tr = _trainer(teacher_dirs, tmp_path / "own", **{"region_weight": "1.0", "data.region_images": "3",
                                                    "data.stage1_token_cache": "true", "data.region_sizes": "64"})
    tr._configure(1)  # data.region_sizes: regions at their own size, whatever the step's D_CLIP size
    assert sorted(tr.regions.select) == [64] and sorted(tr.region_tokens) == [64]
    with torch.no_grad():
        assert torch.equal(tr.region_terms(1, 0, 32)["l_region"], tr.region_terms(1, 0, 64)["l_region"])


def test_background_regions_and_token_owners() -> None:
    """token_owners: a token belongs to the mask covering >= min_cover of its patch (the most covering one),
    to the background where all labelled pixels cover <= the background cover, else to nothing."""
    from samclip.merge.regions import token_owners

    masks = torch.zeros(2, 64, 64, dtype=torch.bool)
    masks[0, :32, :32] = True  # top-left quarter: tokens (0..1, 0..1) of a 4x4 grid
    masks[1, 32:40, 48:64] = True  # half of token (2, 3)
    anything = masks.any(0)
    anything[60:64, 0:4] = True  # a tiny unlisted object: 1/16 of token (3, 0)
    owner, bg = token_owners(masks, anything, 4, 0.5, 0.1)
    assert (owner[:2, :2] == 0).all() and owner[2, 3] == 1
    assert bg[3, 0] and owner[3, 0] == 2  # 1/16 covered <= 0.1: background (index N = 2)
    assert not bg[:2, :2].any() and not bg[2, 3]
    assert int((owner == 2).sum()) == int(bg.sum()) == 16 - 4 - 1
    strict, bg0 = token_owners(masks, anything, 4, 0.5, 0.0)  # a speck makes a token not background
    assert strict[3, 0] == -1 and not bg0[3, 0]
    none, bg_none = token_owners(masks, anything, 4, 0.5, None)  # no background region at all
    assert not bg_none.any() and int((none == -1).sum()) == 11


def test_dense_distillation_loss_on_hand_made_tensors() -> None:
    """Each owned token's own read (LayerNorm + MLP) vs its owner's target; background and mask tokens are
    averaged separately; unowned tokens contribute nothing."""
    from samclip.merge.regions import dense_distillation_loss
    from samclip.models import ClipHeadConfig
    from samclip.models.clip_head import ClipHead

    torch.manual_seed(0)
    encoder = samclip.create_sam("sam-tiny").config.image_encoder
    head = ClipHead(ClipHeadConfig(depth=1, mlp_hidden=8, out_dim=6), encoder)
    tokens = torch.randn(1, 2, 2, 32)
    reads = torch.nn.functional.normalize(head.per_patch(tokens)[0], dim=-1)  # dense_pool 1: each token alone
    targets = torch.stack([reads[0, 0], -reads[0, 1], reads[1, 0]])  # region 2 is a background region
    background = torch.tensor([False, False, True])
    owner = torch.tensor([[[0, 1], [2, -1]]])
    got = dense_distillation_loss(head, tokens, owner, targets, background)
    # mask tokens: (1 - 1) and (1 - (-1)) -> mean 1; background token: 1 - 1 = 0
    assert torch.allclose(got, torch.tensor(1.0), atol=1e-5)
    owner_all_bg = torch.tensor([[[2, -1], [2, -1]]])
    targets_bg = targets.clone()
    targets_bg[2] = reads[1, 0]
    assert dense_distillation_loss(head, tokens, owner_all_bg, targets_bg, background) > 0  # (0, 0) != target
    assert dense_distillation_loss(head, tokens, torch.full((1, 2, 2), -1), targets, background) == 0


def test_stage3_region_and_dense_distillation_train_only_the_head(teacher_dirs, tmp_path) -> None:  # noqa: ANN001
    """region_stages = [3]: stage I has no region term, stage III gets the region and dense terms (logged) at
    data.region_sizes, with background regions whose target is the teacher on the image with its masks grey,
    D_SAM tokens cached with stage III's cache and equal to the online pass; only the CLIP head changes."""
    from samclip.inference.crops import GREY

    over = {"stage1.steps": "1", "stage2.steps": "0", "stage3.steps": "2", "region_weight": "1.0",
            "dense_weight": "1.0", "region_stages": "3", "data.region_background": "true",
            "data.region_images": "3", "data.region_sizes": "64", "data.stage3_sizes": "32",
            "data.stage3_token_cache_images": "8"}
    tr = _trainer(teacher_dirs, tmp_path, **over)
    tr._configure(1)
    assert tr.regions is None
    tr._configure(3)
    regions = tr.regions
    assert sorted(regions.select) == [64] and sorted(tr.region_tokens) == [64] and regions.background.any()
    k = int(np.flatnonzero(regions.background)[0])
    i = int(regions.image_ids[k])
    inst = tr.sam_stream.instance_map(i)
    greyed = np.where((inst > 0)[..., None], np.uint8(GREY), tr.sam_stream.images(np.array([i]))[0])
    assert torch.allclose(regions.targets[k], tr.teachers.clip_image_embeddings(greyed[None])[0], atol=1e-5)
    own = regions.owner[64][i]
    assert (own[regions.select[64][k]] == k).all() and ((own == k) == regions.select[64][k]).all()
    with torch.no_grad():
        cached = tr.region_terms(3, 0, 32)
        tr.region_tokens = {}
        online = tr.region_terms(3, 0, 32)
    assert set(cached) == {"l_region", "l_dense"}
    for name in cached:
        assert torch.allclose(cached[name], online[name], atol=1e-5), name
    tr = _trainer(teacher_dirs, tmp_path / "run", **over)
    before = {k: v.clone() for k, v in tr.model.state_dict().items()}
    tr.run()
    changed = {k for k, v in tr.model.state_dict().items() if not torch.equal(before[k], v)}
    assert changed and all(k.startswith("clip_head.") for k in changed)
    rows = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "l_clip" in r]
    assert not any("l_dense" in r for r in steps if r.get("stage") == 1)
    assert all("l_dense" in r and "l_region" in r for r in steps if r.get("stage") == 3)
    with pytest.raises(ValueError, match="region_stages"):
        _trainer(teacher_dirs, tmp_path / "bad", region_stages="2")


def test_merge_chooses_each_task_size_on_val(teacher_dirs, tmp_path) -> None:  # noqa: ANN001
    """choose_sizes: clip_size by val zero-shot among the trained sizes; label_size by max-pooled mask labels
    among those and region distillation's sizes; semseg_size by the dense metric among the same with the dense
    term, else clip_size."""
    from samclip.merge.run import choose_sizes

    class FakeEvaluator:
        def __init__(self) -> None:
            self.calls = []

        def zero_shot_by_size(self, model, sizes):  # noqa: ANN001, ANN202
            return {s: 90.0 + (s == 64) for s in sizes}

        def mask_label_accuracy_by_size(self, model, sizes, pooling="mean"):  # noqa: ANN001, ANN202
            self.calls.append((pooling, list(sizes)))
            return {s: float(s if pooling == "max" else -abs(s - 128)) for s in sizes}

    regions = {"region_weight": "1.0", "data.region_sizes": "128", "stage3.steps": "0"}
    for dense, want_semseg, want_dense_sizes in (("0", 64, [32, 64]), ("1.0", 128, [32, 64, 128])):
        tr = _trainer(teacher_dirs, tmp_path / dense, dense_weight=dense, **regions)
        ev = FakeEvaluator()
        out = choose_sizes(tr.model, ev, tr.cfg)
        cfg = tr.model.config
        assert (cfg.clip_size, cfg.label_size, cfg.semseg_size) == (64, 128, want_semseg)
        assert out["clip_size"] == 64 and out["label_size"] == 128 and out["semseg_size"] == want_semseg
        assert ev.calls == [("max", [32, 64, 128]), ("mean", want_dense_sizes)]


def test_teacher_cache_on_disk_is_reused_only_for_the_same_data(teacher_dirs, tmp_path) -> None:  # noqa: ANN001
    """Outputs are cached per stream index: a second run over the same streams reads them back, a run over
    other images (here: another D_CLIP size and single-object share) must not."""
    cache = {"data.cache_teachers": "true", "data.cache_dir": str(tmp_path / "cache")}
    tr = _trainer(teacher_dirs, tmp_path / "a", **cache)
    ids = np.arange(5)
    first = tr.teachers.clip_embeddings(ids, tr.clip_stream.images(ids))
    tr.teachers.sam_outputs(ids[:2], tr.sam_stream.images(ids[:2]), [tr.sam_stream.prompts(i) for i in range(2)])
    tr.teachers.save()
    same = _trainer(teacher_dirs, tmp_path / "b", **cache)
    assert sorted(same.teachers.clip_cache) == list(range(5)) and sorted(same.teachers.sam_cache) == [0, 1]
    assert torch.equal(same.teachers.clip_embeddings(ids, same.clip_stream.images(ids)), first)
    other = _trainer(teacher_dirs, tmp_path / "c", **cache, **{"data.clip_single_fraction": "0.5"})
    assert not other.teachers.clip_cache and sorted(other.teachers.sam_cache) == [0, 1]


def test_real_data_merge_validates_on_held_out_folders(teacher_dirs, tmp_path) -> None:  # noqa: ANN001
    """eval.classify_dir / eval.sam_dir: the curves and stage II's early stop read zero-shot top-1 on an image
    folder and box / point mIoU on held-out SA-1B pairs; the merge draws the curves."""
    from PIL import Image

    from samclip.data import single_object_scene, split_seeds
    from samclip.merge.run import run_merge
    from test_real_data import _sa1b_folder, write_real_data

    clip_dir, sam_dir = write_real_data(tmp_path / "data")
    classes = tmp_path / "val_classes"
    for seed in split_seeds("val", 6):
        scene = single_object_scene(int(seed), 64)
        (classes / scene.objects[0].category).mkdir(parents=True, exist_ok=True)
        Image.fromarray(scene.image).save(classes / scene.objects[0].category / f"{seed}.png")
    _sa1b_folder(tmp_path / "val_sa1b", n=2, size=128)
    cfg = load_config(None, _overrides(teacher_dirs, tmp_path / "run", **{
        "data.source": "folders", "data.clip_dir": str(clip_dir), "data.sam_dir": str(sam_dir),
        "eval.every": "1", "eval.classify_dir": str(classes), "eval.sam_dir": str(tmp_path / "val_sa1b"),
        "head.templates": "a photo of a {}.", "stage1.steps": "1", "stage2.steps": "2", "stage3.steps": "1"}))
    summary = run_merge(cfg)
    rows = summary["history"]
    assert [r["stage"] for r in rows] == [1, 2, 2, 3]
    assert all(0 <= r["zero_shot_top1"] <= 100 and 0 <= r["box_miou"] <= 100 for r in rows)
    assert rows[1]["box_miou"] != rows[0]["box_miou"]  # stage II trains the SAM side
    assert rows[3]["box_miou"] == rows[2]["box_miou"]  # stage III does not: its last value carries over
    assert (tmp_path / "run" / "curves.png").is_file() and "val_zero_shot_by_size" not in summary


def test_micro_batches_give_the_whole_batchs_step(teacher_dirs, tmp_path, monkeypatch) -> None:  # noqa: ANN001
    """data.micro_batches: each rank's batches in sequential chunks whose weighted gradients add up to the whole
    batch's: a stage-II step's gradients match one pass per batch (to float rounding)."""
    grads = []
    for i, micro in enumerate(({"data.micro_batches": "1"}, {"data.micro_batches": "3"},
                               {"data.micro_batch_tokens": "1"})):  # one image per chunk
        torch.manual_seed(0)  # the same random CLIP-head MLP
        tr = _trainer(teacher_dirs, tmp_path / f"m{i}", **micro, **{"data.clip_batch": "6", "data.sam_batch": "3"})
        tr._configure(2)
        tr.opt.step = lambda: None  # keep the step's gradients, unclipped
        monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", lambda params, max_norm: None)
        logs = tr.train_step(2, 0)
        assert np.isfinite(logs["l_clip"]) and np.isfinite(logs["l_sam"])
        grads.append({n: p.grad.clone() for n, p in tr.model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() == grads[2].keys()
    assert "sam.image_encoder.blocks.0.attn.qkv.weight" in grads[0]
    for other in grads[1:]:
        for name, g in grads[0].items():
            torch.testing.assert_close(other[name], g, atol=1e-6, rtol=1e-4, msg=name)


def test_micro_batch_tokens_split_large_sizes_further(teacher_dirs, tmp_path) -> None:  # noqa: ANN001
    """data.micro_batch_tokens caps the image tokens of a D_CLIP chunk: at twice the side, four times the chunks;
    never fewer than data.micro_batches; 0 leaves data.micro_batches alone."""
    tr = _trainer(teacher_dirs, tmp_path / "a", **{"data.micro_batches": "2"})
    patch = tr.model.sam.config.image_encoder.patch_size
    assert tr.clip_micro_batches(64, 64 * patch) == 2  # no cap
    tr.cfg.data.micro_batch_tokens = 16 * 16 * 8  # 8 images at a 16x16 grid
    assert tr.clip_micro_batches(64, 16 * patch) == 8
    assert tr.clip_micro_batches(64, 32 * patch) == 32
    assert tr.clip_micro_batches(64, 4 * patch) == 2  # one chunk would do: micro_batches is the floor
    assert tr.clip_micro_batches(5, 16 * patch) == 2
    with pytest.raises(ValueError, match="micro_batch_tokens"):
        _trainer(teacher_dirs, tmp_path / "b", **{"data.micro_batch_tokens": "-1"})


def test_merge_config_templates_become_the_models(teacher_dirs, tmp_path) -> None:  # noqa: ANN001
    tr = _trainer(teacher_dirs, tmp_path, **{"head.templates": "a photo of a {}.|a {} in the wild"})
    assert tr.model.config.templates == ("a photo of a {}.", "a {} in the wild")
    assert _trainer(teacher_dirs, tmp_path / "b").model.config.templates == ()
    with pytest.raises(ValueError, match="needs one"):
        _trainer(teacher_dirs, tmp_path / "c", **{"head.templates": "a photo"})


def test_teacher_cache_saves_only_what_is_new_per_rank(teacher_dirs, tmp_path) -> None:  # noqa: ANN001
    """Each save writes the entries added since the last one as a new part of its rank; a later run reads every
    part of every rank."""
    cache = {"data.cache_teachers": "true", "data.cache_dir": str(tmp_path / "cache")}
    tr = _trainer(teacher_dirs, tmp_path / "a", **cache)
    t = tr.teachers
    t.clip_embeddings(np.arange(3), tr.clip_stream.images(np.arange(3)))
    first = t.save(rank=0)
    assert [p.name.split(".", 1)[1] for p in first] == ["rank0.00000.safetensors"]
    assert t.save(rank=0) == []  # nothing new, nothing written
    t.clip_embeddings(np.arange(2, 6), tr.clip_stream.images(np.arange(2, 6)))  # 2 is cached: 3 new entries
    second = t.save(rank=0)
    assert second[0].name.endswith("rank0.00001.safetensors")
    assert len(load_safetensors(second[0])["ids"]) == 3
    other = _trainer(teacher_dirs, tmp_path / "b", **cache).teachers  # rank 1 of the same run
    other.clip_embeddings(np.array([7]), tr.clip_stream.images(np.array([7])))
    assert other.save(rank=1)[0].name.endswith("rank1.00000.safetensors")
    again = _trainer(teacher_dirs, tmp_path / "c", **cache).teachers
    assert sorted(again.clip_cache) == [0, 1, 2, 3, 4, 5, 7]
    assert torch.equal(again.clip_cache[4], t.clip_cache[4])


def test_sam_side_of_the_cache_can_be_off_and_an_oversized_cache_fails_at_once(teacher_dirs, tmp_path,  # noqa: ANN001
                                                                                 monkeypatch) -> None:  # noqa: ANN001
    from samclip.merge import teachers as teachers_mod

    tr = _trainer(teacher_dirs, tmp_path / "a", **{"data.cache_teachers": "true", "data.cache_sam_teacher": "false"})
    ids = np.arange(2)
    tr.teachers.clip_embeddings(ids, tr.clip_stream.images(ids))
    tr.teachers.sam_outputs(ids, tr.sam_stream.images(ids), [tr.sam_stream.prompts(i) for i in range(2)])
    assert sorted(tr.teachers.clip_cache) == [0, 1] and not tr.teachers.sam_cache
    clip_bytes, sam_bytes = tr.teachers.cache_bytes(tr.clip_stream, tr.sam_stream)
    assert sam_bytes == 0 and clip_bytes == len(tr.clip_stream) * tr.teachers.clip.config.embed_dim * 4
    tr.teachers.cache_sam = True
    _, sam_bytes = tr.teachers.cache_bytes(tr.clip_stream, tr.sam_stream)
    side = 4 * tr.model.img_size // tr.model.sam.config.image_encoder.patch_size
    assert sam_bytes == len(tr.sam_stream) * tr.sam_stream.per_image * 3 * (side * side * 2 + 4)
    monkeypatch.setattr(teachers_mod, "_physical_memory", lambda: sam_bytes)  # the SAM side alone: > half of it
    with pytest.raises(ValueError, match="cache_sam_teacher = false"):
        tr.teachers.bind_streams(tr.clip_stream, tr.sam_stream)
    tr.teachers.cache_sam = False
    tr.teachers.bind_streams(tr.clip_stream, tr.sam_stream)  # the CLIP side alone fits


def test_sam_teacher_targets_are_the_same_fresh_cached_or_uncached(teacher_dirs, tmp_path) -> None:  # noqa: ANN001
    """The SAM teacher's logits are fp16-rounded whether or not the cache keeps them: a step reads the same
    targets online, on first sight and from the cache; float32, on the teachers' device; the cache holds fp16."""
    tr = _trainer(teacher_dirs, tmp_path / "a", **{"data.cache_teachers": "true"})
    t, ids = tr.teachers, np.array([1, 0])
    images, prompts = tr.sam_stream.images(ids), [tr.sam_stream.prompts(int(i)) for i in ids]
    t.use_cache = False
    online = t.sam_outputs(ids, images, prompts)
    t.use_cache = True
    first, again = t.sam_outputs(ids, images, prompts), t.sam_outputs(ids, images, prompts)
    assert sorted(t.sam_cache) == [0, 1] and t.sam_cache[0][0].dtype == torch.float16
    for a, b, c in zip(online, first, again):
        assert a.dtype == torch.float32 and a.device == t.device
        assert torch.equal(a, b) and torch.equal(a, c)
    assert torch.equal(online[0], online[0].half().float())  # already on the fp16 grid


def test_clip_mask_crops_append_crops_of_dsam_masks_to_dclip(teacher_dirs, tmp_path) -> None:  # noqa: ANN001
    """data.clip_mask_crops: D_CLIP ends with that many D_SAM instance-mask crops at its render size."""
    from samclip.inference import mask_crops

    plain = _trainer(teacher_dirs, tmp_path / "a")
    tr = _trainer(teacher_dirs, tmp_path / "b", **{"data.clip_mask_crops": "5"})
    n = len(plain.clip_stream)
    assert len(tr.clip_stream) == n + 5
    assert np.array_equal(tr.clip_stream.images(np.arange(n)), plain.clip_stream.images(np.arange(n)))
    inst = tr.sam_stream.instance_map(0)
    first = np.stack([inst == k for k in np.unique(inst) if k > 0 and (inst == k).sum() >= 30])[:5]
    want = mask_crops(tr.sam_stream.images(np.array([0]))[0], first, 64)
    got = tr.clip_stream.images(np.arange(n, n + len(first)))
    assert np.array_equal(got, want)
    assert (got == 128).any() and (got != 128).any()  # grey outside the mask, the object inside


def test_list_overrides_take_commas_or_toml_brackets() -> None:
    from samclip.merge.config import load_config

    assert load_config(None, ["data.clip_sizes=64,128"]).data.clip_sizes == [64, 128]
    assert load_config(None, ["data.clip_sizes=[64, 128]", "head.tta_sizes=[56]"]).head.tta_sizes == [56]
    with pytest.raises(ValueError, match="must be a list of integers"):
        load_config(None, ["data.clip_sizes=64;128"])


def test_embedding_table_reads_like_a_dict_of_rows() -> None:
    from samclip.merge.teachers import EmbeddingTable

    t = EmbeddingTable(capacity=4)
    rows = torch.randn(10, 6)
    t[2] = rows[2]
    t[np.int64(0)] = rows[0]
    assert 2 in t and np.int64(0) in t and 1 not in t and 99 not in t and "2" not in t
    t.put(torch.tensor([7, 5]), rows[[7, 5]])  # past the reserved 4 rows: grows, keeps what it held
    assert list(t) == [0, 2, 5, 7] and len(t) == 4
    assert torch.equal(t[2], rows[2]) and torch.equal(t.rows([7, 0]), rows[[7, 0]])
    with pytest.raises(KeyError):
        t[1]
    with pytest.raises(KeyError):
        t.rows([5, 3])
    t.clear()
    assert len(t) == 0 and 2 not in t


def test_progress_counts_each_stage_by_its_estimated_work(teacher_dirs, tmp_path) -> None:  # noqa: ANN001
    from samclip.merge.progress import block_cost, stage_step_costs
    from samclip.models import ImageEncoderConfig

    enc = ImageEncoderConfig(img_size=64, patch_size=16, embed_dim=4, depth=2, num_heads=1, mlp_ratio=4.0,
                             window_size=2, global_attn_indexes=(1,))
    assert block_cost(enc, 2, 0) == 4 * (12 * 16 + 2 * 4 * 4)  # 4 tokens, each attending to 4
    assert block_cost(enc, 3, 2) == 16 * (12 * 16 + 2 * 4 * 4)  # 3x3 padded to 4x4, windows of 4 tokens
    default = CONFIG_DIR / "tiny-synthetic.toml"
    encoder = samclip.load_sam("tiny-synthetic").config.image_encoder
    costs = stage_step_costs(load_config(default), encoder, 3, 256)
    assert costs[1] < costs[3] < costs[2]  # measured per step: ~0.17 / ~0.4 / ~0.7 s
    uncached = stage_step_costs(load_config(default, ["data.stage1_token_cache=false"]), encoder, 3, 256)
    assert uncached[1] > costs[1] and (uncached[2], uncached[3]) == (costs[2], costs[3])
    # a whole run: the bar ends full, its postfix counts steps
    tr = _trainer(teacher_dirs, tmp_path)
    work = tr.step_work()
    assert work[1] == 1.0 and work[2] > work[1]
    tr.run()
    bar = tr.log.bar
    assert bar.n == pytest.approx(bar.total) and bar.total == pytest.approx(sum(
        tr.stage_config(s).steps * work[s] for s in (1, 2, 3)))


def test_weighted_progress_bar_shows_steps_and_throughput(tmp_path) -> None:  # noqa: ANN001
    from samclip.teachers.common import TrainLog

    log = TrainLog(tmp_path / "log.jsonl", total=30, desc="merge", every=10, work_total=60.0)
    for step in range(21):
        log.step(step, 2.0, loss=1.0)
    postfix = log.bar.postfix
    log.close()
    assert log.bar.n == pytest.approx(42.0)
    assert "step=21/30" in postfix and "s/step" in postfix, postfix
