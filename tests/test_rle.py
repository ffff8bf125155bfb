"""COCO run-length encoding: hand-derived examples, pycocotools' strings and round trips."""
from __future__ import annotations

import pytest
import torch

from maskml import MaskmlError
from maskml.io.rle import compress_rle, decode_rle, encode_rle, encode_rle_compact, object_annotations, rle_area


def from_counts(counts, h, w):
    """The mask whose column-major runs are `counts`, background first."""
    flat = torch.repeat_interleave(torch.arange(len(counts)) % 2 == 1, torch.tensor(counts))
    return flat.reshape(w, h).T


def test_hand_computed_examples():
    # [[0, 1], [1, 1]] read down the columns is 0, 1, 1, 1: a background run of 1, then 3
    mask = torch.tensor([[0, 1], [1, 1]], dtype=torch.bool)
    assert encode_rle(mask) == [{"size": [2, 2], "counts": [1, 3]}]
    assert compress_rle(encode_rle(mask)[0]) == {"size": [2, 2], "counts": "13"}  # chr(48 + 1), chr(48 + 3)
    # a 2 x 2 square at rows 1-2, columns 2-3 of a 4 x 5 mask: 9 background pixels (columns 0, 1 and the
    # first of 2), 2 foreground, 2 background, ...; from the fourth count on, the difference: 2 - 2, 5 - 2
    square = torch.zeros(4, 5, dtype=torch.bool)
    square[1:3, 2:4] = True
    assert encode_rle(square) == [{"size": [4, 5], "counts": [9, 2, 2, 2, 5]}]
    assert compress_rle(encode_rle(square)[0])["counts"] == "92203"  # as pycocotools.mask.encode writes it
    # foreground first: the background run is 0; [[1, 1], [0, 0]] reads 1, 0, 1, 0
    rle = encode_rle(torch.tensor([[1, 1], [0, 0]], dtype=torch.bool))[0]
    assert rle["counts"] == [0, 1, 1, 1, 1]
    # from the fourth count on, the difference to the count two back: 1 - 1 = 0, 1 - 1 = 0
    assert compress_rle(rle)["counts"] == "01100"

    # counts 5, 2, 40, 3, 1 (3 x 17 = 51 pixels):
    #   5 -> "5"; 2 -> "2"; 40 = 8 + 1 * 32 -> (8 | 0x20) + 48 = "X", then 1 + 48 = "1";
    #   3 - 2 = 1 -> "1"; 1 - 40 = -39 = 25 + (-2) * 32 -> (25 | 0x20) + 48 = "i", then -2 & 31 = 30 -> "N"
    #   (the last group's 0x10 bit says negative, so -39 stops at -1 after two groups)
    mask = from_counts([5, 2, 40, 3, 1], 3, 17)
    rle = encode_rle(mask)[0]
    assert rle == {"size": [3, 17], "counts": [5, 2, 40, 3, 1]}
    assert compress_rle(rle)["counts"] == "52X11iN"  # also what pycocotools.mask.encode writes
    assert rle_area(rle) == rle_area(compress_rle(rle)) == 5
    assert torch.equal(decode_rle({"size": [3, 17], "counts": "52X11iN"}), mask)
    assert torch.equal(decode_rle({"size": [3, 17], "counts": b"52X11iN"}), mask)  # pycocotools' bytes


def test_matches_pycocotools_strings():
    # strings written by pycocotools 2.0 mask.encode for these masks
    y, x = torch.meshgrid(torch.arange(7), torch.arange(9), indexing="ij")
    mask = ((y * 7 + x * 3) % 5 == 0) | (y > 4)
    rle = compress_rle(encode_rle(mask)[0])
    assert rle == {"size": [7, 9], "counts": "0141MO21OO011ON1320NMO21OO011ON1"}
    assert rle_area(rle) == 27
    frame = torch.zeros(300, 200, dtype=torch.bool)
    frame[10:290, 5:195] = True
    frame[100:120, 50:60] = False
    expected = "V_1h8d" + "0" * 89 + "RJ" + "0`20`M" * 9 + "0`20^3" + "0" * 268 + "b^1"
    assert compress_rle(encode_rle(frame)[0])["counts"] == expected


def test_empty_full_and_degenerate_masks():
    assert encode_rle(torch.zeros(3, 4, dtype=torch.bool))[0]["counts"] == [12]
    assert encode_rle(torch.ones(3, 4, dtype=torch.bool))[0]["counts"] == [0, 12]
    assert encode_rle(torch.ones(1, 1, dtype=torch.bool))[0]["counts"] == [0, 1]
    assert encode_rle(torch.zeros(2, 0, 5, dtype=torch.bool)) == [{"size": [0, 5], "counts": [0]}] * 2
    assert compress_rle({"size": [3, 4], "counts": [0, 12]})["counts"] == "0<"  # 12 + 48 = "<"
    for rle in encode_rle(torch.tensor([[[0, 0], [0, 0]], [[1, 1], [1, 1]]], dtype=torch.bool)):
        assert rle_area(rle) == sum(rle["counts"][1::2])
    assert encode_rle(torch.tensor([[0, 1, 2]]))[0]["counts"] == [1, 2]  # nonzero counts as foreground


def test_batches_and_round_trips():
    generator = torch.Generator().manual_seed(0)
    masks = torch.rand(16, 23, 31, generator=generator) < torch.linspace(0, 1, 16)[:, None, None]
    masks[3] = False
    masks[4] = True
    masks[5, 0, 0] = True  # foreground in the first pixel
    batch = encode_rle(masks)
    assert len(batch) == 16
    for mask, rle in zip(masks, batch):
        assert rle == encode_rle(mask)[0]  # a mask encodes the same alone or in a batch
        assert torch.equal(decode_rle(rle), mask)
        compressed = compress_rle(rle)
        assert torch.equal(decode_rle(compressed), mask)
        assert rle_area(rle) == rle_area(compressed) == int(mask.sum())
        assert sum(rle["counts"]) == 23 * 31 and all(c > 0 for c in rle["counts"][1:])


def test_compact_counts_are_the_same_rle():
    masks = torch.rand(4, 7, 5, generator=torch.Generator().manual_seed(0)) > 0.5
    masks[0, 0, 0], masks[1, 0, 0] = True, False  # one starting with a foreground pixel, one without
    for compact, plain, mask in zip(encode_rle_compact(masks), encode_rle(masks), masks):
        assert compact["counts"].dtype == torch.int32 and compact["counts"].tolist() == plain["counts"]
        assert torch.equal(decode_rle(compact), mask) and rle_area(compact) == int(mask.sum())
        assert compress_rle(compact) == compress_rle(plain)
    assert encode_rle_compact(torch.zeros(2, 0, 3, dtype=torch.bool))[0]["counts"].tolist() == [0]


def test_bad_input():
    with pytest.raises(MaskmlError, match="covers|cover"):
        decode_rle({"size": [2, 2], "counts": [1, 2]})
    with pytest.raises(MaskmlError, match="corrupt"):
        decode_rle({"size": [2, 2], "counts": [5, -1]})
    with pytest.raises(MaskmlError, match="middle of a number"):
        decode_rle({"size": [2, 2], "counts": "X"})  # 0x20 set: more groups promised, none follow
    with pytest.raises(MaskmlError, match=r"\(H, W\) or \(N, H, W\)"):
        encode_rle(torch.zeros(2, 2, 2, 2, dtype=torch.bool))


def test_object_annotations_one_per_object():
    ids = torch.zeros(6, 8, dtype=torch.int64)
    ids[1:3, 2:5] = 3  # rows 1-2, columns 2-4
    ids[5, 7] = 1
    first, second = object_annotations(ids)
    assert (first["category_id"], first["area"], first["bbox"], first["iscrowd"]) == (1, 1, [7, 5, 1, 1], 0)
    assert (second["category_id"], second["area"], second["bbox"]) == (3, 6, [2, 1, 3, 2])
    assert torch.equal(decode_rle(second["segmentation"]), ids == 3)
    assert isinstance(second["segmentation"]["counts"], str)  # compressed, as COCO files hold it
    assert object_annotations(torch.zeros(4, 4, dtype=torch.int64)) == []
