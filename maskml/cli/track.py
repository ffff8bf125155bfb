"""`maskml track`: objects given as masks on some frames, tracked through the whole video."""
from __future__ import annotations

import argparse
from contextlib import nullcontext
from pathlib import Path

import numpy as np

from maskml.errors import MaskmlError

EPILOG = """examples:
  maskml track video.mp4 --model cutie_small --mask-dir first_masks/ --out masks/ --overlay tracked.mp4
  maskml track frames/ --model cutie_base --mask-dir annotations/ --out masks/ --probs probs/ \\
      --option mem_every=3 --option use_long_term=true --option long_term.max_mem_frames=4

Each PNG in --mask-dir is named after the frame it belongs to: the frame's file stem for a frame
folder (00005.png for 00005.jpg), the zero-based frame index written with five digits for a video
file (00000.png is the first frame). It adds the objects it contains (palette index = object id;
a plain 0/255 mask is object 1) from that frame on.
"""


def parse_value(text: str):
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_options(items: list[str]) -> dict:
    """["mem_every=3", "long_term.max_mem_frames=4"] -> {"mem_every": 3, "long_term": {"max_mem_frames": 4}}"""
    options: dict = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise MaskmlError(f"--option {item!r} is not of the form KEY=VALUE")
        *parents, leaf = key.split(".")
        node = options
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise MaskmlError(f"--option {item!r}: {part} is not a group of options")
        node[leaf] = parse_value(value)
    return options


def register(subparsers) -> None:
    p = subparsers.add_parser("track", help="track objects given as masks through a video",
                              description="Track objects through a video file or a folder of frames.",
                              epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("video", help="video file (mp4, avi, mov, mkv) or folder of frames (jpg, png)")
    p.add_argument("--model", default="cutie_small", help="tracker model (default: cutie_small)")
    p.add_argument("--checkpoint", help="checkpoint file (default: the official file from the cache)")
    p.add_argument("--mask-dir", required=True, help="folder of indexed PNG masks named after their frames")
    p.add_argument("--out", required=True, help="output folder: one indexed PNG per frame")
    p.add_argument("--probs", help="output folder: per frame float16 .npy (objects, H, W) of probabilities")
    p.add_argument("--overlay", help="output MP4 with the masks drawn over the frames")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="engine option by its official name, e.g. mem_every=3 (repeatable)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.set_defaults(func=run)


def load_prompt_masks(mask_dir: Path, source, frame_size: tuple[int, int]) -> dict[int, np.ndarray]:
    """{frame index: H x W object ids} from --mask-dir, checked against the video's frames."""
    from maskml.io.masks import read_mask

    if not mask_dir.is_dir():
        raise MaskmlError(f"--mask-dir {mask_dir} is not a folder")
    files = sorted(mask_dir.glob("*.png"))
    if not files:
        raise MaskmlError(f"--mask-dir {mask_dir} holds no .png masks")
    index_of = {name: i for i, name in enumerate(source.names)}
    masks = {}
    for path in files:
        if path.stem not in index_of:
            raise MaskmlError(f"mask {path} is named after no frame of the video (frames are named "
                              f"{source.names[0]} ... {source.names[-1]})")
        ids = read_mask(path)
        if ids.shape != frame_size:
            raise MaskmlError(f"mask {path} is {ids.shape[1]}x{ids.shape[0]} but the frames are "
                              f"{frame_size[1]}x{frame_size[0]}")
        if not ids.any():
            raise MaskmlError(f"mask {path} contains no object (all background)")
        masks[index_of[path.stem]] = ids
    return masks


def run(args) -> None:
    import torch
    from tqdm import tqdm

    import maskml
    from maskml.io.draw import draw_masks
    from maskml.io.masks import save_mask
    from maskml.io.video import VideoWriter, atomic_dir, open_video

    options = parse_options(args.option)
    for flag in ("out", "probs"):
        path = getattr(args, flag)
        if path and Path(path).exists() and not Path(path).is_dir():
            raise MaskmlError(f"--{flag} {path} exists and is not a folder")
    if args.overlay and Path(args.overlay).suffix.lower() != ".mp4":
        raise MaskmlError(f"--overlay {args.overlay}: the overlay is written as an .mp4 file")

    source = open_video(args.video)
    masks = load_prompt_masks(Path(args.mask_dir), source, source.size)
    all_ids = sorted({int(i) for ids in masks.values() for i in np.unique(ids) if i != 0})
    model = maskml.load_model(args.model, checkpoint=args.checkpoint, device=args.device)
    tracker = maskml.VideoTracker(model, **options)
    first = min(masks)

    height, width = source.size
    with atomic_dir(args.out) as out_dir, \
            (atomic_dir(args.probs) if args.probs else nullcontext()) as probs_dir, \
            (VideoWriter(args.overlay, fps=source.fps, size=(width, height)) if args.overlay else nullcontext()) as video:
        bar = tqdm(total=len(source), unit="frame", desc=f"tracking with {args.model}")
        for index, name, frame in source:
            if index < first:  # nothing to track yet: empty outputs keep one file per frame
                labels = np.zeros((height, width), np.uint8)
                probs = np.zeros((len(all_ids), height, width), np.float16)
            else:
                result = tracker.step(frame, mask=masks.get(index))
                labels = result.labels.cpu().numpy()
                probs = np.zeros((len(all_ids), height, width), np.float16)
                for channel, obj in enumerate(result.object_ids):
                    probs[all_ids.index(obj)] = result.probs[channel].cpu().numpy()
            save_mask(out_dir / f"{name}.png", labels)
            if probs_dir is not None:
                np.save(probs_dir / f"{name}.npy", probs)
            if video is not None:
                video.write(draw_masks(frame, labels))
            bar.update(1)
        bar.close()
    print(f"{len(source)} frames, objects {all_ids} -> {args.out}")
