"""SAM 2.1 video sessions against the official SAM2VideoPredictor (tests/fixtures/sam2, from
shared/parity/sam2; tolerances from its README: logits max-abs 2e-3 and mean-abs 2e-4 per frame and
object, stats 2e-4, object scores 1e-4, mask IoU >= 0.998)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import maskml
from conftest import FIXTURES
from maskml.predict.sam2 import VideoSession

SAM2 = FIXTURES / "sam2"
FRAMES = SAM2 / "inputs" / "bedroom"


@pytest.fixture(scope="module")
def sam2_model(sam2_checkpoint):
    return maskml.load_model("sam2.1_hiera_t", checkpoint=sam2_checkpoint)


def check(expected, prefix: str, steps, session, kind: str | None = None) -> None:
    """Compare a list of (frame_idx, obj_ids, logits) with the official outputs saved under `prefix`."""
    frames = [s.frame_idx for s in steps]
    np.testing.assert_array_equal(frames, expected[f"{prefix}_frame_idx"])
    logits = torch.stack([s.logits for s in steps]).numpy()  # (T, N, H, W)
    t, n, h, w = (int(v) for v in expected[f"{prefix}_masks_shape"])
    assert logits.shape == (t, n, h, w)
    assert list(steps[0].obj_ids) == list(expected["obj_ids"][:n])
    sub = logits[..., ::4, ::4]
    ref = expected[f"{prefix}_logits_sub"]
    err = np.abs(sub - ref)
    assert err.max(axis=(2, 3)).max() <= 2e-3, f"{prefix}: logits max-abs {err.max():.2e}"
    assert err.mean(axis=(2, 3)).max() <= 2e-4, f"{prefix}: logits mean-abs {err.mean(axis=(2, 3)).max():.2e}"
    full = logits.astype(np.float64)
    stats = np.stack([full.mean((2, 3)), full.std((2, 3)), np.abs(full).mean((2, 3))], axis=-1)
    np.testing.assert_allclose(stats, expected[f"{prefix}_logits_stats"], atol=2e-4, rtol=0)
    ref_masks = np.unpackbits(expected[f"{prefix}_masks_packed"], axis=-1)[..., :h * w].reshape(t, n, h, w) > 0
    masks = logits > 0
    inter = (masks & ref_masks).sum((2, 3))
    union = (masks | ref_masks).sum((2, 3))
    iou = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
    assert iou.min() >= 0.998, f"{prefix}: mask IoU {iou.min():.5f}"
    scores = np.array([[np.nan if (o := session.objects[obj].output(f, kind)) is None else float(o.object_score)
                        for obj in steps[0].obj_ids] for f in frames])
    ref_scores = expected[f"{prefix}_object_score_logits"]
    np.testing.assert_array_equal(np.isnan(scores), np.isnan(ref_scores))
    np.testing.assert_allclose(np.nan_to_num(scores), np.nan_to_num(ref_scores), atol=1e-4, rtol=0)


def test_click_box_then_corrections(sam2_model):
    """Two objects prompted on frame 0 (a click, a box), propagated; then a correction click on a tracked frame
    (discarded by the next propagation, as officially), then the same click as a conditioning frame."""
    session = VideoSession(sam2_model, FRAMES, cached_frames=8)  # features are identical either way; saves time
    assert session.num_frames == 8 and session.video_size == (270, 480)
    expected = np.load(SAM2 / "expected_video_click_box.npz")
    check(expected, "add0", [session.add_points(0, 1, [[105, 105]], [1])], session, "cond")
    check(expected, "add1", [session.add_box(0, 2, [389, 13, 479, 125])], session, "cond")
    first_pass = list(session.propagate())
    check(expected, "prop", first_pass, session)

    refine = np.load(SAM2 / "expected_video_refine.npz")
    check(refine, "add0", [session.add_points(5, 1, [[140, 120]], [0])], session, "non_cond")
    second_pass = list(session.propagate())
    check(refine, "prop", second_pass, session)
    for a, b in zip(first_pass, second_pass):  # the correction was recomputed away, bit for bit
        assert torch.equal(a.logits, b.logits)

    as_cond = np.load(SAM2 / "expected_video_refine_as_cond.npz")
    session.add_all_frames_to_correct_as_cond = True
    check(as_cond, "add0", [session.add_points(5, 1, [[140, 120]], [0])], session, "cond")
    check(as_cond, "prop", list(session.propagate()), session)


def test_prompt_mid_video_forward_then_reverse(sam2_model):
    session = VideoSession(sam2_model, FRAMES)
    expected = np.load(SAM2 / "expected_video_mid_fwd_rev.npz")
    check(expected, "add0", [session.add_points(4, 1, [[95, 95]], [1])], session, "cond")
    check(expected, "fwd", list(session.propagate(start=4)), session)
    rev = list(session.propagate(start=4, reverse=True))
    check(expected, "rev", rev, session)

    # an object added after tracking started: the others keep their outputs, both are tracked from there
    added = session.add_box(2, 2, [389, 13, 479, 125])
    assert added.obj_ids == [1, 2]
    assert torch.equal(added.logits[0], next(s for s in rev if s.frame_idx == 2).logits[0])
    steps = list(session.propagate(start=2, max_frames=1))  # as officially: start plus max_frames more
    assert [s.frame_idx for s in steps] == [2, 3] and all(s.logits.shape == (2, 270, 480) for s in steps)
    assert torch.equal(steps[0].logits[1], added.logits[1])  # its conditioning output


DECODED_SHA256 = {  # shared/parity/sam2/cases.json: sha256 of the RGB pixels the official loader decoded
    0: "ddd40386c43063c165f82abb779d01077d96d51843c4f021857379c3e14f9cb3",
    7: "26fc8ae137576023737a92b688a3c9bb37c0ad935d868499cfb4596e9a8887a1",
}


def test_frames_decode_and_resize_like_the_official_loader():
    """Frames decode to the official pixels, and the 1024 x 1024 resize equals Pillow's BICUBIC bit for bit."""
    import hashlib

    from PIL import Image

    from maskml.io.video import open_video
    from maskml.predict.resize import resize_like_pillow

    video = open_video(FRAMES)
    for index, digest in DECODED_SHA256.items():
        frame = video.frame(index)
        assert hashlib.sha256(np.ascontiguousarray(frame).tobytes()).hexdigest() == digest
        ours = resize_like_pillow(torch.from_numpy(frame), (1024, 1024), "bicubic").numpy()
        np.testing.assert_array_equal(ours, np.array(Image.fromarray(frame).resize((1024, 1024), Image.BICUBIC)))
    rng = np.random.default_rng(0)  # shrinking, with the wider taps
    big = rng.integers(0, 256, (1100, 1500, 3), dtype=np.uint8)
    np.testing.assert_array_equal(resize_like_pillow(torch.from_numpy(big), (1024, 1024), "bicubic").numpy(),
                                  np.array(Image.fromarray(big).resize((1024, 1024), Image.BICUBIC)))
