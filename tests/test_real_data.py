"""The merge's real-data readers (``samclip.merge.real_data``): image folders, plain ``.tar`` shards and SA-1B
folders, indexed up front and decoded only when a batch asks for them."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from samclip.data import generate_scene
from samclip.merge import real_data
from samclip.merge.real_data import LazyImages, LazySa1bPairs, PairField, square_resize, square_resize_nearest
from samclip.merge.streams import ClipStream, SamStream


def _image(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture()
def clip_folder(tmp_path: Path) -> tuple[Path, list[np.ndarray]]:
    """Images in sorted-path order: a/0.png, a/1.png, b/shard.tar (3 members), c.png; plus files to skip."""
    root = tmp_path / "clip"
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    expected = []
    for i, (h, w) in enumerate([(40, 60), (50, 30)]):
        arr = _image(h, w, i)
        (root / "a" / f"{i}.png").write_bytes(_png(arr))
        expected.append(arr)
    with tarfile.open(root / "b" / "shard.tar", "w") as tar:
        for k, (h, w) in enumerate([(32, 32), (20, 45), (64, 48)]):
            arr = _image(h, w, 10 + k)
            data = _png(arr)
            info = tarfile.TarInfo(f"{k:06d}.png")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
            expected.append(arr)
            note = f"caption {k}".encode()
            info = tarfile.TarInfo(f"{k:06d}.txt")  # webdataset's other members are skipped
            info.size = len(note)
            tar.addfile(info, io.BytesIO(note))
    arr = _image(33, 70, 20)
    (root / "c.png").write_bytes(_png(arr))
    expected.append(arr)
    (root / "readme.txt").write_text("not an image")
    return root, expected


def test_folder_stream_reads_what_was_written_in_order_and_only_on_demand(clip_folder, monkeypatch) -> None:  # noqa: ANN001
    root, expected = clip_folder
    decoded: list[str] = []
    real_decode = real_data.decode_rgb
    monkeypatch.setattr(real_data, "decode_rgb", lambda data, name: decoded.append(name) or real_decode(data, name))
    stream = ClipStream.from_folder(root, size=24)
    assert len(stream) == len(expected) == 6 and not decoded  # an index only
    batch = stream.images(np.array([5, 2, 0, 3]))
    assert batch.shape == (4, 24, 24, 3) and batch.dtype == np.uint8 and len(decoded) == 4
    for got, k in zip(batch, [5, 2, 0, 3]):
        np.testing.assert_array_equal(got, square_resize(expected[k], 24))
    np.testing.assert_array_equal(stream.images(np.array([4]))[0], square_resize(expected[4], 24))
    assert len(ClipStream.from_folder(root, size=24, limit=3)) == 3


def test_mirrored_views_and_extra_images_of_a_folder_stream(clip_folder) -> None:  # noqa: ANN001
    root, expected = clip_folder
    stream = ClipStream.from_folder(root, size=16, hflip=True)
    assert len(stream) == 12
    both = stream.images(np.array([1, 7]))
    np.testing.assert_array_equal(both[1], both[0][:, ::-1])
    extra = _image(16, 16, 99)[None]
    longer = stream.with_images(extra)
    assert len(longer) == 14
    np.testing.assert_array_equal(longer.images(np.array([6]))[0], extra[0])
    with pytest.raises(IndexError):
        LazyImages(real_data.index_images(root), 16)[6]


def test_bad_folders_and_shards_are_clear_errors(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images found"):
        ClipStream.from_folder(tmp_path / "empty", 16)
    (tmp_path / "gz").mkdir()
    with tarfile.open(tmp_path / "gz" / "shard.tar", "w:gz") as tar:
        data = _png(_image(8, 8, 0))
        info = tarfile.TarInfo("0.png")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    with pytest.raises(ValueError, match="not a plain .tar shard"):
        ClipStream.from_folder(tmp_path / "gz", 16)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(OSError, match="x.jpg: not a readable image"):
        LazyImages(real_data.index_images(tmp_path / "bad"), 16)[0]
    with pytest.warns(UserWarning, match="x.jpg"), pytest.raises(OSError, match="1 unreadable images in a row"):
        ClipStream.from_folder(tmp_path / "bad", 16).images(np.array([0]))
    (tmp_path / "cut").mkdir()  # a shard cut in the middle of its second member
    whole = io.BytesIO()
    with tarfile.open(fileobj=whole, mode="w") as tar:
        for i in range(3):
            data = _png(_image(64, 64, i))
            info = tarfile.TarInfo(f"{i}.png")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    (tmp_path / "cut" / "shard.tar").write_bytes(whole.getvalue()[: len(whole.getvalue()) // 2])
    with pytest.raises(ValueError, match="truncated or corrupt .tar shard"):
        ClipStream.from_folder(tmp_path / "cut", 16)


def test_sa1b_pairs_whose_masks_do_not_fit_their_image_are_refused(tmp_path: Path) -> None:
    """Masks of another size than their image (cropped apart they would not line up), a negative mask size,
    masks of different sizes in one file: errors naming the file (or, skipping, the next good pair)."""
    root = tmp_path / "sa1b"
    _sa1b_folder(root, n=2)
    Image.open(root / "sa_0.jpg").resize((120, 96)).save(root / "sa_0.jpg")
    with pytest.raises(ValueError, match="its masks are 96x96, its image .* is 120x96"):
        real_data.LazySa1bPairs([real_data.ImageRef(str(root / "sa_0.jpg"))], [str(root / "sa_0.json")], 64).pairs([0])
    data = json.loads((root / "sa_1.json").read_text())
    data["annotations"][0]["segmentation"]["size"] = [-5, 96]
    (root / "sa_1.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="sa_1.json: not an SA-1B annotation file"):
        real_data.read_instance_map(str(root / "sa_1.json"), 64)


def test_a_folder_stream_replaces_an_unreadable_image_by_the_next(clip_folder) -> None:  # noqa: ANN001
    """A web crawl always holds a few broken files: D_CLIP reads the next image in their place (the same one on
    every rank and after a resume) and warns once per file."""
    root, expected = clip_folder
    (root / "a" / "0b.png").write_bytes(b"truncated")  # sorts between a/0.png and a/1.png
    stream = ClipStream.from_folder(root, size=20)
    assert len(stream) == 7
    with pytest.warns(UserWarning, match="0b.png") as caught:
        batch = stream.images(np.array([1, 1, 2]))
    assert len(caught) == 1
    for got in batch[:2]:
        np.testing.assert_array_equal(got, square_resize(expected[1], 20))


def _sa1b_folder(root: Path, n: int = 3, size: int = 96) -> list:  # noqa: ANN001
    """Scene-world images as SA-1B pairs: every instance mask, plus one mask of a whole that contains the
    first instance (SA-1B's masks overlap)."""
    from pycocotools import mask as mask_utils

    root.mkdir(parents=True, exist_ok=True)
    scenes = []
    for i in range(n):
        scene = generate_scene(seed=100 + i, size=size)
        Image.fromarray(scene.image).save(root / f"sa_{i}.jpg", quality=95)
        masks = list(scene.instance_masks)
        whole = masks[0].copy()
        ys, xs = np.nonzero(whole)
        whole[max(0, ys.min() - 4) : ys.max() + 5, max(0, xs.min() - 4) : xs.max() + 5] = True
        anns = []
        for m in [*masks, whole]:
            rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
            anns.append({"segmentation": {"size": rle["size"], "counts": rle["counts"].decode()},
                         "area": int(m.sum())})
        (root / f"sa_{i}.json").write_text(json.dumps({"image": {"height": size, "width": size}, "annotations": anns}))
        scenes.append((scene, whole))
    return scenes


def test_sa1b_stream_decodes_instance_maps_on_demand(tmp_path: Path) -> None:
    scenes = _sa1b_folder(tmp_path / "sa1b")
    (tmp_path / "sa1b" / "orphan.json").write_text("{}")  # no image beside it: skipped
    stream = SamStream.from_sa1b(tmp_path / "sa1b", size=64, per_image=4, seed=0)
    assert len(stream) == 3 and isinstance(stream._inst, PairField)
    for i, (scene, whole) in enumerate(scenes):
        inst = stream.instance_map(i)
        assert inst.shape == (64, 64) and inst.dtype == np.uint8
        # painted largest first: the whole (id of its rank by area) is left where its part is not
        areas = sorted([int(m.sum()) for m in [*scene.instance_masks, whole]], reverse=True)
        part_id = areas.index(int(scene.instance_masks[0].sum())) + 1
        expected_part = square_resize_nearest(scene.instance_masks[0].astype(np.uint8), 64).astype(bool)
        assert ((inst == part_id) == expected_part).mean() > 0.99
        assert (inst > 0).sum() >= expected_part.sum()
        prompts = stream.prompts(i)
        assert prompts.boxes.shape == (2, 4) and prompts.points.shape == (2, 2)
    assert stream.images(np.array([0, 2])).shape == (2, 64, 64, 3)
    # prompts sampled ahead on a background thread (as a GPU merge does) are the ones sampled on demand
    fresh = SamStream.from_sa1b(tmp_path / "sa1b", size=64, per_image=4, seed=0)
    fresh.prefetch(np.array([2, 0]), prompts=True)
    assert sorted(fresh._pending) == [0, 2]
    for i in (0, 2, 1):
        ahead, direct = fresh.prompts(i), stream.prompts(i)
        for field in ("boxes", "points", "box_targets", "point_targets"):
            assert torch.equal(getattr(ahead, field), getattr(direct, field)), field
    assert not fresh._pending  # taken once, not kept
    (tmp_path / "sa1b" / "sa_1.json").write_text("{not json")
    strict = SamStream.from_sa1b(tmp_path / "sa1b", size=64, per_image=4, seed=0, skip_unreadable=False)
    with pytest.raises(ValueError, match="sa_1.json: not an SA-1B annotation file"):
        strict.instance_map(1)
    with pytest.raises(ValueError, match="no SA-1B style"):
        SamStream.from_sa1b(tmp_path, size=64, per_image=4, seed=0)


def test_a_bad_sa1b_pair_gives_way_to_the_next_with_its_masks(tmp_path: Path) -> None:
    """A pair whose annotation is broken, whose image is broken, or that has no mask is replaced, image and
    masks together, by the next good pair, with one warning per file."""
    _sa1b_folder(tmp_path / "sa1b", n=5)
    root = tmp_path / "sa1b"
    good = SamStream.from_sa1b(root, size=64, per_image=4, seed=0)
    expected = [(good.images(np.array([i]))[0], good.instance_map(i)) for i in range(5)]
    (root / "sa_1.json").write_text("{not json")
    (root / "sa_2.jpg").write_bytes(b"not a jpeg")
    (root / "sa_4.json").write_text(json.dumps({"annotations": []}))
    stream = SamStream.from_sa1b(root, size=64, per_image=4, seed=0)
    with pytest.warns(UserWarning, match="unreadable SA-1B pair"):
        images = stream.images(np.arange(5))
    assert stream._images._pairs.unreadable == {str(root / n) for n in ("sa_1.json", "sa_2.json", "sa_4.json")}
    for i, source in enumerate([0, 3, 3, 3, 0]):  # 1 and 2 -> 3; 4 wraps around to 0
        assert np.array_equal(images[i], expected[source][0])
        assert np.array_equal(stream.instance_map(i), expected[source][1])
        assert stream.prompts(i).boxes.shape == (2, 4)


def test_sa1b_pairs_read_each_pair_once_per_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A step's images and then their instance maps (and the prompts drawn from them) read each pair once."""
    import samclip.merge.real_data as rd

    _sa1b_folder(tmp_path / "sa1b")
    reads = []
    real = rd.instance_map_full
    monkeypatch.setattr(rd, "instance_map_full", lambda path: reads.append(path) or real(path))
    stream = SamStream.from_sa1b(tmp_path / "sa1b", size=64, per_image=4, seed=0)
    stream.prefetch(np.array([0, 1]))
    stream.images(np.array([0, 1, 2]))
    for i in range(3):
        stream.instance_map(i)
        stream.prompts(i)
    assert sorted(reads) == sorted(str(tmp_path / "sa1b" / f"sa_{i}.json") for i in range(3))
    assert isinstance(stream._images._pairs, LazySa1bPairs)


def write_real_data(root: Path) -> tuple[Path, Path]:
    """A small D_CLIP folder (a plain tar shard of scene images) and D_SAM folder (SA-1B pairs)."""
    clip_dir = root / "clip"
    clip_dir.mkdir(parents=True)
    with tarfile.open(clip_dir / "shard-000.tar", "w") as tar:
        for i in range(24):
            data = _png(generate_scene(seed=200 + i, size=80).image)
            info = tarfile.TarInfo(f"{i:06d}.png")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    _sa1b_folder(root / "sam", n=6, size=128)
    return clip_dir, root / "sam"


def test_prefetched_reads_are_taken_and_stale_ones_dropped(clip_folder, monkeypatch) -> None:  # noqa: ANN001
    root, expected = clip_folder
    images = LazyImages(real_data.index_images(root), 20)
    decoded: list[str] = []
    real_decode = real_data.decode_rgb
    monkeypatch.setattr(real_data, "decode_rgb", lambda data, name: decoded.append(name) or real_decode(data, name))
    images.prefetch([1, 2])
    images._pending[1][1].result()
    images._pending[2][1].result()
    assert len(decoded) == 2
    batch = images[np.array([2, 1, 0])]  # 1 and 2 from the read-ahead, 0 read now
    assert len(decoded) == 3 and not images._pending
    for got, k in zip(batch, [2, 1, 0]):
        np.testing.assert_array_equal(got, square_resize(expected[k], 20))
    images.prefetch([3])
    images.prefetch([4])
    assert set(images._pending) == {3, 4}
    images.prefetch([5])  # the read of 3, asked for two prefetches ago and never taken, is dropped
    assert set(images._pending) == {4, 5}
