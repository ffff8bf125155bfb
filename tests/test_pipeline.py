"""Pipeline: a prompter's masks become tracked objects; objects added, corrected and removed on any frame."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import maskml
from maskml import MaskmlError, Pipeline, Prompt, TrackerOutput
from maskml.io.video import open_video

@pytest.fixture(scope="module")
def prompter(sam_checkpoints):
    return maskml.load_model("mobile_sam", checkpoint=sam_checkpoints["mobile_sam"])


@pytest.fixture(scope="module")
def frames(small_judo):
    return [frame for _, _, frame in open_video(small_judo)]


def prompter_ids(predictor, prompts) -> torch.Tensor:
    """The id map Pipeline should make, from ImagePredictor calls on the frame it holds."""
    ids = torch.zeros(predictor.original_size, dtype=torch.int64)
    for p in prompts:
        out = predictor.predict(points=p.points or None, labels=p.labels or None, box=p.box, multimask=False)
        ids[out.logits[0] > 0] = p.object_id
    return ids


def test_add_correct_and_remove_objects(frames, prompter, cutie_small_checkpoint):
    cutie = maskml.load_model("cutie_small", checkpoint=cutie_small_checkpoint)
    tracker = maskml.VideoTracker(cutie)
    pipe = Pipeline(tracker, prompter=prompter)

    before = pipe.step(frames[0])  # no object yet: the tracker is not even run
    assert before.object_ids == [] and before.labels.shape == (96, 160) and not before.labels.any()
    assert tracker.curr_ti == -1

    first = [Prompt(1, points=[(80, 45), (30, 20)], labels=[1, 0])]
    out0 = pipe.step(frames[0], first)
    expected0 = prompter_ids(pipe.predictor, first)
    assert out0.object_ids == [1] and pipe.object_ids == [1]
    torch.testing.assert_close(out0.labels, expected0, rtol=0, atol=0)
    out1 = pipe.step(frames[1])
    assert out1.object_ids == [1] and out1.probs.shape == (1, 96, 160)

    # frame 2: object 1 corrected with a box, object 2 added; the masks replace the tracker's estimate
    second = [Prompt(1, box=(50, 15, 110, 85)), Prompt(2, points=[(140, 75)])]
    pipe.segment(frames[2], second)
    embedding = pipe.predictor.get_image_embedding()
    out2 = pipe.step(frames[2], second)
    assert pipe.predictor.get_image_embedding() is embedding  # the same frame is embedded once
    expected2 = prompter_ids(pipe.predictor, second)
    assert out2.object_ids == [1, 2]
    torch.testing.assert_close(out2.labels, expected2, rtol=0, atol=0)
    out3 = pipe.step(frames[3])

    # ... and enter its memory: frame 3 is what the tracker makes from exactly those masks
    reference = maskml.VideoTracker(cutie)
    reference.step(frames[0], expected0)
    reference.step(frames[1])
    reference.step(frames[2], expected2)
    torch.testing.assert_close(out3.probs, reference.step(frames[3]).probs, rtol=0, atol=0)

    with pytest.raises(MaskmlError, match=r"cannot remove objects \[7\]: they are not tracked \(objects: \[1, 2\]\)"):
        pipe.remove_objects([1, 7])  # checked first: object 1 stays
    with pytest.raises(MaskmlError, match=r"an iterable of object ids, e.g. remove_objects\(\[2\]\)"):
        tracker.remove_objects(2)
    assert tracker.objects == [1, 2]
    pipe.remove_objects([1])
    assert tracker.objects == [2]
    out4 = pipe.step(frames[4])
    assert out4.object_ids == [2] and pipe.object_ids == [2] and set(out4.labels.unique().tolist()) <= {0, 2}
    pipe.reset()
    assert pipe.step(frames[4]).object_ids == [] and pipe.object_ids == []


def test_prompts_combine_with_a_given_mask(frames, prompter, cutie_small_checkpoint):
    pipe = Pipeline(maskml.VideoTracker(maskml.load_model("cutie_small", checkpoint=cutie_small_checkpoint)), prompter)
    given = np.zeros((96, 160), np.uint8)
    given[:, :20] = 3
    prompts = [Prompt(1, points=[(100, 50)])]
    out = pipe.step(frames[0], prompts, mask=given)
    ids = prompter_ids(pipe.predictor, prompts)
    expected = torch.where(ids > 0, ids, torch.from_numpy(given).long())
    assert out.object_ids == [1, 3]
    torch.testing.assert_close(out.labels, expected, rtol=0, atol=0)


def test_empty_prompter_mask_is_one_clear_error(frames, sam_checkpoints, cutie_small_checkpoint):
    blind = maskml.load_model("mobile_sam", checkpoint=sam_checkpoints["mobile_sam"])
    with torch.no_grad():  # a decoder whose mask logits are 0 everywhere: every mask is empty
        for p in blind.mask_decoder.output_hypernetworks_mlps.parameters():
            p.zero_()
    pipe = Pipeline(maskml.VideoTracker(maskml.load_model("cutie_small", checkpoint=cutie_small_checkpoint)), blind)
    with pytest.raises(MaskmlError, match=r"objects \[4\] give an empty mask"):
        pipe.step(frames[0], [Prompt(4, points=[(10, 10)])])
    with pytest.raises(MaskmlError, match="outside the 160x96 frame"):
        pipe.step(frames[0], [Prompt(1, points=[(161, 10)])])
    with pytest.raises(MaskmlError, match="one prompt per object"):
        pipe.step(frames[0], [Prompt(1, points=[(1, 1)]), Prompt(1, box=(0, 0, 5, 5))])
    assert pipe.object_ids == []


class BoxTracker:
    """A tracker that takes prompts itself (as SAM 2 does): each object is the box of its last prompt."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.boxes: dict[int, tuple] = {}
        self.steps = 0

    def remove_objects(self, ids) -> None:
        for i in ids:
            self.boxes.pop(i, None)

    def step(self, frame, mask=None, prompts=()) -> TrackerOutput:
        self.steps += 1
        self.boxes.update({p.object_id: p.box for p in prompts})
        labels = torch.zeros(frame.shape[:2], dtype=torch.int64)
        for obj, (x0, y0, x1, y1) in sorted(self.boxes.items()):
            labels[int(y0):int(y1), int(x0):int(x1)] = obj
        ids = sorted(self.boxes)
        probs = torch.stack([(labels == i).float() for i in ids]) if ids else torch.zeros(0, *labels.shape)
        return TrackerOutput(probs=probs, object_ids=ids, labels=labels)


def test_tracker_that_takes_prompts_gets_them_unchanged(frames):
    tracker = BoxTracker()
    pipe = Pipeline(tracker)  # no prompter needed
    assert pipe.tracker_takes_prompts
    assert pipe.step(frames[0]).object_ids == [] and tracker.steps == 0
    out = pipe.step(frames[0], [Prompt(2, box=(10, 20, 30, 40))])
    assert out.object_ids == [2] and int((out.labels == 2).sum()) == 20 * 20
    assert pipe.step(frames[1]).object_ids == [2] and tracker.steps == 2
    pipe.remove_objects([2])
    assert pipe.step(frames[2]).object_ids == [] and pipe.object_ids == []
    with pytest.raises(MaskmlError, match="no prompter"):
        pipe.segment(frames[0], [Prompt(1, points=[(1, 1)])])


def test_prompt_records_are_checked():
    p = Prompt(3, points=[[1, 2], (3.5, 4)], box=[0, 0, 10, 10])
    assert p.points == ((1.0, 2.0), (3.5, 4.0)) and p.labels == (1, 1) and p.box == (0.0, 0.0, 10.0, 10.0)
    assert Prompt(np.int64(2), box=(5, 5, 5, 5)).object_id == 2  # a one-pixel box is a box
    for kwargs, message in [({"object_id": 0, "points": [(1, 1)]}, "positive integer"),
                            ({"object_id": True, "points": [(1, 1)]}, "positive integer"),
                            ({"object_id": "1", "points": [(1, 1)]}, "positive integer"),
                            ({"object_id": 1, "points": [(1, 1)], "labels": [1, 0]}, "1 points but 2 labels"),
                            ({"object_id": 1, "points": [(1, 1)], "labels": [2]}, "1 .object. or 0"),
                            ({"object_id": 1, "box": (10, 0, 5, 5)}, "x1 >= x0"),
                            ({"object_id": 1}, "at least one point or a box")]:
        with pytest.raises(MaskmlError, match=message):
            Prompt(**kwargs)
    Prompt(1, points=[(64, 48)], box=(0, 0, 64, 48)).check_inside((48, 64))
    with pytest.raises(MaskmlError, match=r"box \(0, 0, 65, 48\) of object 1 is outside the 64x48 frame"):
        Prompt(1, box=(0, 0, 65, 48)).check_inside((48, 64))
    with pytest.raises(MaskmlError, match=r"point \(-1, 3\)"):
        Prompt(1, points=[(-1, 3)]).check_inside((48, 64))


def test_tracker_input_errors_say_what_and_how_to_fix(frames, cutie_small_checkpoint):
    model = maskml.load_model("cutie_small", checkpoint=cutie_small_checkpoint)
    tracker = maskml.VideoTracker(model, max_objects=2)
    three = np.zeros((96, 160), np.uint8)
    three[10:30, 10:30], three[40:60, 40:60], three[70:90, 100:140] = 1, 2, 3
    with pytest.raises(MaskmlError, match=r"the mask holds 3 object ids: more than the limit of 2 objects; 3 objects "
                                          r"would take about .* GB of memory with cutie_small on 160x96 frames "
                                          r".*give VideoTracker\(model, max_objects=3\)"):
        tracker.step(frames[0], three)
    assert tracker.curr_ti == -1  # refused before any work

    probability = np.zeros((96, 160), np.float32)  # one object's probabilities: no longer "contains no object"
    probability[20:60, 30:90] = 0.8
    probability[70:80, 10:20] = 0.3
    out = tracker.step(frames[0], probability)
    assert out.object_ids == [1]
    torch.testing.assert_close(out.labels, torch.from_numpy(probability >= 0.5).long(), rtol=0, atol=0)
    whole = three.astype(np.float64)  # whole numbers in a float array are ids
    whole[three == 3] = 0
    assert tracker.step(frames[1], whole).object_ids == [1, 2]
    with pytest.raises(MaskmlError, match=r"the mask holds fractional values from 0 to 2.5: give object ids"):
        tracker.step(frames[2], probability * 3.125)
    with pytest.raises(MaskmlError, match="the mask holds -1: object ids are positive integers"):
        tracker.step(frames[2], -(three > 0).astype(np.int64))
    with pytest.raises(MaskmlError, match=r"the mask is 80x48 but the frame is 160x96"):
        tracker.step(frames[2], three[::2, ::2])
    with pytest.raises(MaskmlError, match=r"the frame is 80x48, but this video's frames are 160x96: give every frame "
                                          r"of a video at one size, or call reset\(\) to start another video"):
        tracker.step(frames[2][::2, ::2])  # was a RuntimeError about tensor sizes deep in the memory readout
    assert tracker.step(frames[2]).object_ids == [1, 2]  # nothing was changed by the refused calls
    tracker.reset()
    assert tracker.step(frames[3][::2, ::2], three[::2, ::2] > 0).object_ids == [1]
    with pytest.raises(MaskmlError, match="max_objects must be a positive integer, got 0"):
        maskml.VideoTracker(model, max_objects=0)

    pipe = Pipeline(maskml.VideoTracker(model))
    assert pipe.step(frames[0], mask=probability).object_ids == [1]  # the pipeline passes masks on as they are
    with pytest.raises(MaskmlError, match=r"object 1: point labels must be 1 \(object\) or 0 \(background\), got "
                                          r"\['fg'\]"):
        Prompt(1, points=[(10, 10)], labels=["fg"])
    with pytest.raises(MaskmlError, match=r"object 1: points must have shape N x 2, got \(1, 3\)"):
        Prompt(1, points=[(10, 10, 1)])
    with pytest.raises(MaskmlError, match=r"object 2: box must be numbers"):
        Prompt(2, box="0,0,5,5")
    assert Prompt(1, points=((x, 5) for x in (1, 2))).points == ((1.0, 5.0), (2.0, 5.0))
    with pytest.raises(MaskmlError, match=r"prompts are a list of maskml.Prompt, e.g. \[Prompt\(1, points=\[\(320, "
                                          r"200\)\]\)\], got Prompt"):
        pipe.step(frames[1], Prompt(1, points=[(10, 10)]))
    with pytest.raises(MaskmlError, match=r"prompts are maskml.Prompt records, .* got '1,1'"):
        pipe.step(frames[1], ["1,1"])
