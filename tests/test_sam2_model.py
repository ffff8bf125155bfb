"""SAM 2 / 2.1 model layout, zoo entries and the video session's input checks (no heavy compute)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import maskml
from conftest import FIXTURES, manifest_keys, write_parity_checkpoint
from maskml.predict.sam2 import VideoSession

SAM2 = FIXTURES / "sam2"
NAMES = {f"sam{v}_hiera_{s}": f"sam{v}_hiera_{f}" for v in ("2", "2.1")
         for s, f in (("t", "tiny"), ("s", "small"), ("b+", "base_plus"), ("l", "large"))}


@pytest.mark.parametrize("name", list(NAMES))
def test_every_release_builds_with_exactly_the_official_keys(name):
    keys = manifest_keys(SAM2 / f"manifest_{NAMES[name]}.json")
    with torch.device("meta"):
        state = maskml.build_model(name).state_dict()
    assert list(state) == list(keys)
    assert {k: list(v.shape) for k, v in state.items()} == keys


def test_zoo_entries_point_at_the_official_files():
    for name, stem in NAMES.items():
        entry = maskml.zoo.get_entry(name)
        release = "092824" if name.startswith("sam2.1") else "072824"
        assert entry.url == f"https://dl.fbaipublicfiles.com/segment_anything_2/{release}/{stem}.pt"
        assert entry.state_dict_key == "model"
        assert len(entry.sha256) == 64
    assert maskml.zoo.get_entry("sam2.1_hiera_t").sha256 == (
        "7402e0d864fa82708a20fbd15bc84245c2f26dff0eb43a4b5b93452deb34be69")


def test_a_sam2_checkpoint_for_a_sam21_name_says_which_is_which(tmp_path):
    path = write_parity_checkpoint(SAM2 / "manifest_sam2_hiera_tiny.json", tmp_path / "sam2_hiera_tiny.pt",
                                   wrap_key="model")
    with pytest.raises(maskml.MaskmlError) as info:
        maskml.load_model("sam2.1_hiera_t", checkpoint=path)
    message = str(info.value)
    assert "does not fit sam2.1_hiera_t" in message and "3 missing keys" in message
    assert "looks like a checkpoint for sam2_hiera_t" in message
    assert "\n" not in message


@pytest.fixture(scope="module")
def session():
    frames = np.zeros((3, 40, 60, 3), dtype=np.uint8)  # a tiny in-memory video; nothing is computed here
    return VideoSession(maskml.build_model("sam2.1_hiera_t"), frames)


@pytest.mark.parametrize("call,match", [
    (lambda s: s.add_points(3, 1, [[10, 10]], [1]), "frame 3 does not exist"),
    (lambda s: s.add_points(-1, 1, [[10, 10]], [1]), "frame -1 does not exist"),
    (lambda s: s.add_points(0, 0, [[10, 10]], [1]), "an object id must be a positive integer, got 0"),
    (lambda s: s.add_points(0, "a", [[10, 10]], [1]), "an object id must be a positive integer, got 'a'"),
    (lambda s: s.add_box(0, 1, [50, 10, 20, 30]), "x1 >= x0"),
    (lambda s: s.add_points(0, 1, [[70, 10]], [1]), "outside the 60x40 frame"),
    (lambda s: s.add_points(0, 1, [[10, 10], [20, 20]], [1]), "2 points but 1 labels"),
    (lambda s: s.add_points(0, 1, [[10, 10]], [2]), "labels must be 1"),
    (lambda s: s.add_points(0, 1), "give points"),
    (lambda s: s.add_mask(0, 1, np.zeros((40, 60), bool)), "is empty"),
    (lambda s: s.add_mask(0, 1, np.full((40, 60), 0.3)), r"is empty \(no value of 0.5 or more\)"),
    (lambda s: s.add_mask(0, 1, np.full((40, 60), 2.5)), "probabilities from 0 to 1, got values from 2.5 to 2.5"),
    (lambda s: s.add_mask(0, 1, [["a"]]), "must be an H x W array of numbers"),
    (lambda s: s.add_points(0, 1, [[10, 10]], ["fg"]),
     r"labels must be 1 \(object\) or 0 \(background\), got \['fg'\]"),
    (lambda s: s.remove_objects(7), r"an iterable of object ids, e.g. remove_objects\(\[2\]\), got 7"),
    (lambda s: list(s.propagate()), "no object has a prompt"),
    (lambda s: s.remove_objects([7]), r"cannot remove objects \[7\]: they are not tracked \(objects: none\)"),
])
def test_bad_prompts_get_one_clear_error(session, call, match):
    with pytest.raises(maskml.MaskmlError, match=match):
        call(session)
    assert not session.objects  # nothing half-added


def test_session_needs_a_sam2_model():
    with pytest.raises(maskml.MaskmlError, match="needs a SAM 2 model"):
        VideoSession(maskml.build_model("mobile_sam"), np.zeros((1, 8, 8, 3), np.uint8))


def test_outputs_far_from_the_current_and_the_conditioning_frames_are_dropped(session):
    """Memory stays bounded on long videos: a tracked frame's output is kept while it is within keep_window of
    the frame being processed or of one of the object's conditioning frames."""
    from maskml.predict.sam2.session import FrameOutput, ObjectTrack

    out = FrameOutput(torch.zeros(1, 1, 4, 4), torch.zeros(1, 256), torch.ones(1, 1))
    track = ObjectTrack(cond={10: out, 500: out}, non_cond={t: out for t in range(1000) if t not in (10, 500)})
    session.keep_window = 16
    session._forget_far_outputs(track, 999)
    kept = sorted(track.non_cond)
    assert kept == [t for t in range(27) if t != 10] + [t for t in range(484, 517) if t != 500] + list(range(983, 1000))


def test_session_video_of_another_kind_is_one_clear_error():
    with pytest.raises(maskml.MaskmlError, match=r"video must be a video file or frame folder \(a path\), frames "
                                                 r"\(T, H, W, 3\) uint8 RGB, or a frame source .*, got int"):
        VideoSession(maskml.build_model("sam2.1_hiera_t"), 5)


def test_sam2_tracker_checks_frames_and_object_counts_before_any_work():
    tracker = maskml.Sam2Tracker(maskml.build_model("sam2.1_hiera_t"), max_objects=2)
    frame = np.zeros((40, 60, 3), np.uint8)
    three = np.zeros((40, 60), np.uint8)
    three[:5, :5], three[10:15, :5], three[20:25, :5] = 1, 2, 3
    with pytest.raises(maskml.MaskmlError, match=r"the mask holds 3 object ids: more than the limit of 2 objects; "
                                                 r"3 objects would take about .* GB of memory with sam2.1_hiera_t on "
                                                 r"60x40 frames .*give Sam2Tracker\(model, max_objects=3\)"):
        tracker.step(frame, three)
    assert tracker.step(frame).object_ids == []  # no object yet: nothing to compute
    with pytest.raises(maskml.MaskmlError, match=r"the frame is 30x20, but this video's frames are 60x40: give every "
                                                 r"frame of a video at one size, or call reset\(\)"):
        tracker.step(frame[::2, ::2])
    with pytest.raises(maskml.MaskmlError, match=r"a frame must be an H x W x 3 uint8 RGB array, got \(40, 60\)"):
        tracker.step(frame[..., 0])
    tracker.reset()
    assert tracker.step(frame[::2, ::2]).labels.shape == (20, 30)  # a new video may have another size
    with pytest.raises(maskml.MaskmlError, match=r"cannot remove objects \[1\]: they are not tracked"):
        tracker.remove_objects([1])
    with pytest.raises(maskml.MaskmlError, match="max_objects must be a positive integer, got 0"):
        maskml.Sam2Tracker(tracker.model, max_objects=0)
