"""SAM 2 frame by frame (Sam2Tracker) in a Pipeline that gives it the clicks itself."""
from __future__ import annotations

import numpy as np
import torch

import maskml
from conftest import FIXTURES
from maskml.io.video import open_video

SAM2 = FIXTURES / "sam2"


def test_sam2_takes_clicks_and_boxes_in_a_pipeline(sam2_checkpoint):
    model = maskml.load_model("sam2.1_hiera_t", checkpoint=sam2_checkpoint)
    pipe = maskml.Pipeline(maskml.Sam2Tracker(model))
    assert pipe.tracker_takes_prompts
    video = open_video(SAM2 / "inputs" / "bedroom")
    out = pipe.step(video.frame(0), [maskml.Prompt(2, box=(389, 13, 479, 125)), maskml.Prompt(1, points=[(105, 105)])])
    # a prompted frame is a conditioning frame: the official prompt outputs (objects in id order)
    official = np.load(SAM2 / "expected_video_click_box.npz")
    assert out.object_ids == [1, 2]
    logits = torch.logit(out.probs.double().clamp(1e-12, 1 - 1e-12))[:, ::4, ::4].numpy()
    assert np.abs(logits - official["add1_logits_sub"][0]).max() < 2e-3
    assert torch.equal(out.labels == 1, (out.probs[0] > 0.5) & (out.probs[0] >= out.probs[1]))
    out = pipe.step(video.frame(1))
    assert out.object_ids == [1, 2] and out.probs.shape == (2, 270, 480)
    assert ((out.labels == 1) | (out.labels == 2)).any()
    pipe.remove_objects([2])
    out = pipe.step(video.frame(2))
    assert out.object_ids == [1] and set(out.labels.unique().tolist()) <= {0, 1}
    pipe.reset()
    assert pipe.step(video.frame(3)).object_ids == []
