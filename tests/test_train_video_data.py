"""Video training data (maskml.train.data.video, pseudo_video): every layout read into the same clips, clips
sampled as Cutie's training samples them (window with a maximum gap that follows a schedule over the training
steps, merged clips with soft pasted edges, pseudo-videos pasted from several images, objects of the first
frame, at most K), seeded randomness, and bad input skipped with the file named or stopped with one clear error."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from maskml.errors import MaskmlError
from maskml.io.images import write_image
from maskml.io.masks import write_mask
from maskml.io.rle import compress_rle, encode_rle
from maskml.io.video import VideoWriter
from maskml.train.data.pseudo_video import PseudoVideos, tps_offsets
from maskml.train.data.readers import open_source
from maskml.train.data.synth import SynthConfig, generate
from maskml.train.data.video import (MERGE_BLUR_SIGMA, HeldOutVideos, VideoClips, open_videos, paste_objects,
                                     split_videos)
from maskml.train.engine import StepBatches, step_loader

H, W = 48, 64


def scene(t: int, objects: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Frame t: objects as squares moving right on a grey ramp; (H, W, 3) uint8 and (H, W) uint8 ids."""
    frame = np.tile(np.linspace(40, 200, W, dtype=np.uint8)[None, :, None], (H, 1, 3))
    ids = np.zeros((H, W), np.uint8)
    for k in range(objects):
        y, x = 6 + 14 * k, 4 + 2 * t + 6 * k
        ids[y:y + 10, x:x + 10] = k + 1
        frame[y:y + 10, x:x + 10] = (60 * k + 40, 200 - 50 * k, 90)
    return frame, ids


def write_folder_video(root, name: str, frame_names: list[str], annotated=None, objects: int = 3) -> None:
    for t, frame_name in enumerate(frame_names):
        frame, ids = scene(t, objects)
        write_image(root / "JPEGImages" / name / f"{frame_name}.jpg", frame)
        if annotated is None or t in annotated:
            write_mask(root / "Annotations" / name / f"{frame_name}.png", ids)


@pytest.fixture(scope="module")
def davis_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("davis")
    (root / "JPEGImages").mkdir()
    (root / "Annotations").mkdir()
    write_folder_video(root, "alpha", [f"{t:05d}" for t in range(12)])
    # names that are not numbers: ordered by name
    write_folder_video(root, "beta", ["frame_a", "frame_b", "frame_c", "frame_d", "frame_e", "frame_f"], objects=2)
    return root


def test_davis_clips_follow_cutie_sampling_and_are_seeded(davis_root):
    videos, skipped = open_videos(davis_root, min_frames=4)
    assert [v.name for v in videos] == ["alpha", "beta"] and skipped == []
    assert videos[1].frame_names[:2] == ["frame_a", "frame_b"]
    clips = VideoClips(videos, num_frames=4, max_objects=2, size=32, max_gap=2)
    assert len(clips) == 12 + 6  # one item per annotated frame
    item = clips.sample(3, seed=11)
    assert item["frames"].shape == (4, 3, 32, 32) and item["frames"].dtype == torch.uint8
    assert item["masks"].dtype == torch.bool and item["masks"].shape[:2] == (4, len(item["obj_ids"]))
    assert 1 <= len(item["obj_ids"]) <= 2 and item["masks"][0].flatten(1).any(1).all()
    again = clips.sample(3, seed=11)
    assert torch.equal(item["frames"], again["frames"]) and item["obj_ids"] == again["obj_ids"]
    assert not torch.equal(item["frames"], clips.sample(3, seed=12)["frames"])
    # the window: each frame within max_gap of the next; time order, reversed about half of the time
    g = torch.Generator().manual_seed(0)
    reversed_count = 0
    for start in range(12):
        positions = clips.positions(12, start, g, clips.gap_at(0))
        ordered = sorted(positions)
        assert len(set(positions)) == 4 and start in positions
        assert all(b - a <= 2 for a, b in zip(ordered, ordered[1:]))
        assert positions in (ordered, ordered[::-1])
        reversed_count += positions != ordered
    assert 2 <= reversed_count <= 10
    # held-out videos: full length, at their size, the first frame's objects
    held = HeldOutVideos(videos[:1])[0]
    assert held["frames"].shape == (12, 3, H, W) and held["obj_ids"] == [1, 2, 3]
    assert torch.equal(held["masks"][5, 0], torch.from_numpy(scene(5)[1] == 1))
    assert split_videos(videos, 1) == (videos[:1], videos[1:])


def test_youtube_vos_sparse_annotations_and_meta(tmp_path):
    root = tmp_path / "ytvos"
    names = [f"{t:05d}" for t in range(0, 50, 5)]
    write_folder_video(root, "v1", [f"{t:05d}" for t in range(50)], annotated=set(range(0, 50, 5)))
    write_folder_video(root, "v2", names)  # not in meta.json: another split's video
    # meta.json lists objects 1 and 3 only: palette index 2 is not an object of this split
    meta = {"videos": {"v1": {"objects": {"1": {"category": "a", "frames": names},
                                          "3": {"category": "b", "frames": names}}}}}
    (root / "meta.json").write_text(json.dumps(meta))
    videos, skipped = open_videos(root, min_frames=8)
    assert [v.name for v in videos] == ["v1"] and videos[0].frame_names == names
    clips = VideoClips(videos, num_frames=8, max_objects=3, size=32)
    for seed in range(3):
        assert set(clips.sample(seed, seed)["obj_ids"]) <= {1, 3}


def test_bad_videos_are_skipped_with_the_file_named_or_stop(tmp_path):
    root = tmp_path / "bad"
    write_folder_video(root, "good", [f"{t:05d}" for t in range(6)])
    write_folder_video(root, "short", [f"{t:05d}" for t in range(2)])
    write_folder_video(root, "unpaired", [f"{t:05d}" for t in range(6)])
    (root / "JPEGImages" / "unpaired" / "00003.jpg").unlink()
    write_folder_video(root, "corrupt", [f"{t:05d}" for t in range(6)])
    for t in range(6):
        (root / "JPEGImages" / "corrupt" / f"{t:05d}.jpg").write_bytes(b"not a jpeg")
    videos, skipped = open_videos(root, min_frames=4)
    assert sorted(v.name for v in videos) == ["corrupt", "good"]
    assert len(skipped) == 2
    assert any("unpaired/00003.png" in s and "do not pair up" in s for s in skipped)
    assert any("short" in s and "fewer than the 4" in s for s in skipped)
    clips = VideoClips(videos, num_frames=4, max_objects=3, size=32)
    corrupt_item = next(i for i, (v, _) in enumerate(clips.items) if clips.videos[v].name == "corrupt")
    with pytest.warns(UserWarning, match="corrupt/0000"):
        item = clips.sample(corrupt_item, seed=0)
    assert item["name"].startswith("good/")
    stopping = VideoClips(videos, num_frames=4, max_objects=3, size=32, on_error="stop")
    with pytest.raises(MaskmlError, match="bad video: .*corrupt"):
        stopping.sample(corrupt_item, seed=0)
    with pytest.raises(MaskmlError, match="no video has the 9 annotated frames"):
        VideoClips(videos, num_frames=9)
    with pytest.raises(MaskmlError, match="holds no usable video; left out: .*fewer than the 40"):
        open_videos(root, min_frames=40)
    with pytest.raises(MaskmlError, match="none of the known layouts"):
        open_videos(tmp_path, min_frames=1)


def sav_annotation(frames: int) -> dict:
    """SA-V's JSON: masklets (one RLE per object) on every 4th frame; objects may overlap."""
    masklets = []
    for t in range(0, frames, 4):
        ids = torch.from_numpy(scene(t, 2)[1])
        both = torch.stack([ids == 1, (ids == 2) | (ids == 1)])  # object 7 covers object 4: overlapping masklets
        masklets.append([compress_rle(r) for r in encode_rle(both)])
    return {"video_id": "sav_000001", "video_frame_count": frames, "masklet": masklets, "masklet_id": [4, 7]}


def test_sav_from_the_mp4_and_from_extracted_frames(tmp_path):
    frames = 20
    mp4_dir, jpg_dir = tmp_path / "mp4", tmp_path / "jpg"
    for folder in (mp4_dir, jpg_dir):
        folder.mkdir()
        (folder / "sav_000001_manual.json").write_text(json.dumps(sav_annotation(frames)))
    with VideoWriter(mp4_dir / "sav_000001.mp4", 24.0, (W, H)) as writer:
        for t in range(frames):
            writer.write(scene(t, 2)[0])
    for t in range(frames):
        write_image(jpg_dir / "sav_000001" / f"{t:05d}.jpg", scene(t, 2)[0])
    (mp4_dir / "sav_000002_manual.json").write_text(json.dumps(sav_annotation(frames)))
    (mp4_dir / "sav_000002.mp4").write_bytes(b"\x00" * 100)  # an unreadable MP4
    from_mp4, skipped = open_videos(mp4_dir)
    from_jpg, _ = open_videos(jpg_dir)
    assert [v.name for v in from_mp4] == ["sav_000001", "sav_000002"] and skipped == []
    assert from_mp4[0].frame_names == ["00000", "00004", "00008", "00012", "00016"]
    a, b = HeldOutVideos(from_mp4[:1])[0], HeldOutVideos(from_jpg)[0]
    assert a["obj_ids"] == b["obj_ids"] == [4, 7]
    assert torch.equal(a["masks"], b["masks"]) and a["masks"][2, 1].sum() > a["masks"][2, 0].sum()
    # the frames decoded from the MP4 are the annotated ones (frame 4k), up to compression
    assert (a["frames"].float() - b["frames"].float()).abs().mean() < 8
    clips = VideoClips(from_mp4, num_frames=3, max_objects=2, size=32)
    bad = next(i for i, (v, _) in enumerate(clips.items) if clips.videos[v].name == "sav_000002")
    with pytest.warns(UserWarning, match="sav_000002.mp4"):
        assert clips.sample(bad, seed=1)["name"].startswith("sav_000001/")


def test_synth_videos_and_pseudo_videos(tmp_path):
    generate(tmp_path / "synth", SynthConfig(images=2, videos=2, width=64, height=48, frames=6, min_objects=2,
                                             max_objects=3), progress=False)
    videos, _ = open_videos(tmp_path / "synth", min_frames=6)
    assert len(videos) == 2 and len(videos[0]) == 6
    pseudo = PseudoVideos(open_source(tmp_path / "synth" / "images"), num_frames=3, max_objects=2, size=32)
    item = pseudo.sample(1, seed=5)
    assert item["frames"].shape == (3, 3, 32, 32) and item["masks"].shape[:2] == (3, len(item["obj_ids"]))
    assert 1 <= len(item["obj_ids"]) <= 2 and item["masks"][0].flatten(1).any(1).all()
    assert torch.equal(item["frames"], pseudo.sample(1, seed=5)["frames"])
    # each frame its own deformation of the one image: the frames differ
    assert (item["frames"][0].float() - item["frames"][1].float()).abs().mean() > 1
    offsets = tps_offsets(torch.Generator().manual_seed(0), (32, 32))
    assert offsets.shape == (32, 32, 2) and 0 < offsets.abs().mean() < 32 * 0.1


# ------------------------------------------------------------------------ Cutie's merging, pasting, max_skip curriculum

def test_pasted_objects_have_blurred_or_hard_edges_and_take_their_pixels():
    frames, other = torch.zeros(2, 3, 16, 16, dtype=torch.uint8), torch.full((2, 3, 16, 16), 200, dtype=torch.uint8)
    below = torch.zeros(2, 1, 16, 16, dtype=torch.bool)
    below[:, :, :, :8] = True
    square = torch.zeros(2, 1, 16, 16, dtype=torch.bool)
    square[:, :, 4:12, 4:12] = True
    blended, masks = paste_objects(frames, below, other, square, MERGE_BLUR_SIGMA)
    assert blended.dtype == torch.uint8 and masks.shape == (2, 2, 16, 16)
    assert torch.equal(masks[:, 0], below[:, 0] & ~square[:, 0]) and torch.equal(masks[:, 1], square[:, 0])
    row = blended[0, 0, :, 8].tolist()  # down a column through the square: 0 .. soft edge .. 200 .. soft edge .. 0
    assert row[1] == 0 and row[8] == 200 and 100 < row[4] < 200 and 0 < row[3] < 100
    # the blur is Cutie's 5 x 5 Gaussian of sigma 1: a one-pixel object spreads over exactly its kernel
    dot = torch.zeros(1, 1, 16, 16, dtype=torch.bool)
    dot[0, 0, 8, 8] = True
    spread = paste_objects(frames[:1], below[:1], other[:1], dot, MERGE_BLUR_SIGMA)[0][0, 0].float()
    line = torch.exp(-torch.arange(-2, 3.0) ** 2 / 2)
    kernel = torch.outer(line, line) / line.sum() ** 2
    assert torch.equal(spread[6:11, 6:11], (200 * kernel).round())
    assert spread.sum() == spread[6:11, 6:11].sum()
    # hard: the pasted pixels exactly, nothing around them
    hard = paste_objects(frames, below, other, square, blur_sigma=None)[0]
    assert torch.equal(hard, torch.where(square.expand(-1, 3, -1, -1), other, frames))


@pytest.fixture(scope="module")
def merge_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("merge")
    (root / "JPEGImages").mkdir()
    (root / "Annotations").mkdir()
    for name in ("one_a", "one_b"):
        write_folder_video(root, name, [f"{t:05d}" for t in range(8)], objects=1)
    write_folder_video(root, "three", [f"{t:05d}" for t in range(8)])
    return root


def test_merging_pastes_a_second_clip_at_its_probability(merge_root):
    videos, _ = open_videos(merge_root, min_frames=4)
    single = [v for v in videos if v.name.startswith("one")]

    def clips(p, pool=videos):
        return VideoClips(pool, num_frames=4, max_objects=2, size=32, merge_probability=p)

    half, never, always = clips(0.5), clips(0.0), clips(1.0)
    # the one-object videos' items (fewer objects than max_objects): merged half of the time
    items = [i for i, (v, _) in enumerate(half.items) if half.videos[v].name.startswith("one")]
    merged = sum("+" in half.sample(items[s % len(items)], s)["name"] for s in range(40))
    assert 12 <= merged <= 28
    assert not any("+" in never.sample(items[s % len(items)], s)["name"] for s in range(10))
    pasted_three = 0
    for s in range(8):
        item = always.sample(items[s % len(items)], s)
        assert "+" in item["name"] and 1 <= len(item["obj_ids"]) <= always.max_objects
        assert len(set(item["obj_ids"])) == len(item["obj_ids"]) and item["masks"][0].flatten(1).any(1).all()
        assert item["masks"].sum(1).max() <= 1  # the pasted objects took their pixels: no overlap
        pasted_three += "+three/" in item["name"]
    assert pasted_three  # 1 + up to 3 objects, cut to max_objects
    # a clip that already shows max_objects objects is not merged
    three = [always.sample(i, i) for i, (v, _) in enumerate(always.items) if always.videos[v].name == "three"][:6]
    assert any("+" not in item["name"] for item in three)
    assert all(len(item["obj_ids"]) == 2 for item in three if "+" not in item["name"])
    item = always.sample(items[0], 0)
    assert torch.equal(item["frames"], always.sample(items[0], 0)["frames"])
    # merged on the clip it would have been: the same frames away from the pasted object, a blend at its edge
    plain, pasting = clips(0.0, single), clips(1.0, single)
    checked = 0
    for s in range(6):
        base, item = plain.sample(s, s), pasting.sample(s, s)
        if len(item["obj_ids"]) < 2:
            continue  # the pasted object covered the first one in the first frame
        pasted = item["masks"][:, 1:2].float()
        near = torch.nn.functional.max_pool2d(pasted, 5, 1, 2)[:, 0] > 0  # within the blur's reach
        edge = (torch.nn.functional.max_pool2d(pasted, 3, 1, 1)[:, 0] > 0) & ~item["masks"][:, 1]
        far = ~near[:, None].expand(-1, 3, -1, -1)
        assert torch.equal(item["frames"][far], base["frames"][far])
        assert (item["frames"] != base["frames"])[edge[:, None].expand(-1, 3, -1, -1)].any()  # soft, not hard
        assert torch.equal(item["masks"][:, 0], base["masks"][:, 0] & ~item["masks"][:, 1])
        checked += 1
    assert checked >= 3


def test_stage_pre_pastes_objects_of_several_images(tmp_path):
    generate(tmp_path / "synth", SynthConfig(images=4, videos=0, width=64, height=48, min_objects=2, max_objects=3),
             progress=False)
    source = open_source(tmp_path / "synth" / "images")
    several = PseudoVideos(source, num_frames=3, max_objects=3, size=32)
    image_counts = []
    for seed in range(10):
        item = several.sample(seed % 4, seed)
        images = item["name"].split("+")
        image_counts.append(len(images))
        assert set(item["obj_ids"]) <= set(range(1, len(images) + 1)) and len(item["obj_ids"]) <= 3
        assert item["masks"].sum(1).max() <= 1 and item["masks"][0].flatten(1).any(1).all()
        assert torch.equal(item["frames"], several.sample(seed % 4, seed)["frames"])
    assert max(image_counts) >= 2 and min(image_counts) == 1
    one = PseudoVideos(source, num_frames=3, max_objects=1, size=32)
    assert all(one.sample(s, s)["obj_ids"] == [1] and "+" not in one.sample(s, s)["name"] for s in range(4))


def test_the_engine_gives_each_item_its_step_and_the_gap_follows_the_schedule(tmp_path):
    root = tmp_path / "long"
    for t in range(40):  # objects stay in view; only the frame names tell the frames apart
        frame, ids = scene(t % 4, objects=2)
        write_image(root / "JPEGImages" / "long" / f"{t:05d}.jpg", frame)
        write_mask(root / "Annotations" / "long" / f"{t:05d}.png", ids)
    videos, _ = open_videos(root, min_frames=4)
    clips = VideoClips(videos, num_frames=4, max_objects=2, size=16, gap_schedule=[(0, 1), (4, 15), (8, 1)])

    def spans(workers: int, start: int = 0) -> list[list[int]]:
        batches = StepBatches(len(clips), batch_size=2, grad_accum=1, seed=0, start=start, stop=12)
        loader = step_loader(clips, batches, list, num_workers=workers, pin_memory=False, seed=0)
        out = []
        for batch in loader:
            names = [[int(n) for n in item["frame_names"]] for item in batch]
            out.append([max(n) - min(n) for n in names])
        return out

    for workers in (0, 1):
        by_step = spans(workers)
        assert len(by_step) == 12
        # gap 1: 4 consecutive frames; gap 15: frames spread; then back to 1
        assert all(span == 3 for step in (0, 1, 2, 3, 8, 9, 10, 11) for span in by_step[step])
        assert all(span > 3 for step in (4, 5, 6, 7) for span in by_step[step])
    assert spans(0, start=6) == spans(1)[6:]  # a resumed stream: the same steps, the same gaps
    a, b = clips.sample(3, 99, step=5), clips.sample(3, 99, step=5)
    assert torch.equal(a["frames"], b["frames"]) and a["frame_names"] == b["frame_names"]
    assert clips.gap_at(3) == 1 and clips.gap_at(4) == clips.gap_at(7) == 15 and clips.gap_at(100) == 1
