"""Video segmentation data on disk -> training clips and held-out validation videos, as tensors.

    videos, skipped = open_videos("data/synth")          # layout detected, or layout="davis" / "sav" ...
    clips = VideoClips(videos, num_frames=8, max_objects=3, size=480)
    item = clips.sample(index, seed, step)                 # its randomness from `seed`, its gap from `step`
    held_out = HeldOutVideos(videos[-5:], size=480)        # full videos for J&F

Layouts:
    davis / ytvos / mose   JPEGImages/<video>/<frame>.jpg + Annotations/<video>/<frame>.png (indexed PNGs,
                           palette index = object id). Annotations may be sparse (YouTube-VOS: every 5th
                           frame): the annotated frames are a video's frames here. A meta.json next to the
                           folders (YouTube-VOS, MOSE) restricts the videos and object ids to those it lists.
    sav                    SA-V: <video>_manual.json (masklets as COCO RLE on every 4th frame of the video)
                           next to <video>.mp4, decoded directly, or next to a folder <video>/ of its frames
                           already extracted (00000.jpg, ... at the video's full frame rate).
    synth                  the output of `maskml data synth` (its videos/ folder, in the davis layout).
Frame names need not be numbers: frames are ordered by the numbers their names are when all are numbers,
else by name (as maskml.io.video reads a folder of frames).

Clips are sampled as Cutie's training samples them (cutie/dataset/vos_dataset.py): an item is a (video,
annotated frame) pair; from that frame the clip grows by frames within `max_gap` of the last one taken
(or the gap of the item's optimizer step in `gap_schedule`: Cutie's max_skip curriculum), is put in time
order and reversed half of the time; one random flip, affine map (rotation 25 degrees, shear 20) and crop (36
to 100 % of the area) to size x size for the whole clip, colour jitter for the clip and for each frame. The
first frame must show an object (else another crop, then another clip). With `merge_probability`, a clip with
fewer than `max_objects` objects gets the first-frame objects of a second clip (of a random item) pasted on,
through their masks blurred by a 5 x 5 Gaussian (sigma 1), each taking its pixels from the objects under it.
The clip's objects are those of its first frame, at most `max_objects` (a random subset).

Item: {"frames": (T, 3, S, S) uint8, "masks": (T, N, S, S) bool (object n in every frame; empty where it is
hidden or gone), "obj_ids": [N ids], "name": "<video>/<first frame>" ("<clip>+<clip>" when merged),
"frame_names": the clip's frames in its order, "seed"}.

Bad input: a video whose masks and frames do not pair up (a mask without its frame), with fewer annotated
frames than a clip needs, or whose SA-V JSON is unreadable is left out when the videos are listed (counted
in `skipped`, each with its file named); a frame, mask or MP4 found unreadable when a clip is read makes
the clip come from the next video (on_error="skip", warned with the file named) or stops with that message
(on_error="stop").
"""
from __future__ import annotations

import functools
import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from maskml.errors import MaskmlError
from maskml.io.masks import read_mask
from maskml.io.rle import decode_rle
from maskml.io.video import in_frame_order, open_video
from maskml.train.data.dataset import _uniform as uniform
from maskml.train.data.readers import IMAGE_SUFFIXES, BadSample, _image_tensor

SAV_STEP = 4  # SA-V annotates every 4th frame (6 of the videos' 24 frames per second)
FILL = (124, 116, 104)  # Cutie's im_mean: the colour of the area an affine map brings in
VIDEO_LAYOUTS = ("davis", "ytvos", "mose", "sav", "synth")
MERGE_BLUR_SIZE, MERGE_BLUR_SIGMA = 5, 1.0  # Cutie's blur of a merged video's object masks (a soft pasted edge)


@dataclass
class VideoRecord:
    """One video's annotated frames and where to read them. Either per-frame files (images + masks), or an
    SA-V annotation with its MP4 or frame folder (source) and the frame index of each annotated frame."""

    name: str
    frame_names: list[str]
    images: list[Path] = field(default_factory=list)
    masks: list[Path] = field(default_factory=list)
    annotation: Path | None = None
    source: Path | None = None
    frame_indices: list[int] = field(default_factory=list)
    object_ids: list[int] | None = None  # meta.json's ids (other palette indices are ignored); None: all

    def __len__(self) -> int:
        return len(self.frame_names)

    def load(self, positions: list[int]) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """Annotated frames `positions` -> (T, H, W, 3) uint8, (T, K, H, W) bool masks of the video's objects
        in these frames, their K ids. BadSample names the file that cannot be read or does not fit."""
        if self.annotation is not None:
            return self._load_sav(positions)
        frames = [_image_tensor(self.images[p]) for p in positions]
        id_maps = []
        for p, frame in zip(positions, frames):
            try:
                ids = torch.from_numpy(read_mask(self.masks[p])).long()
            except MaskmlError as exc:
                raise BadSample(str(exc)) from None
            if ids.shape != frame.shape[:2]:
                raise BadSample(f"{self.masks[p]} is {ids.shape[1]} x {ids.shape[0]} but its frame {self.images[p]}"
                                f" is {frame.shape[1]} x {frame.shape[0]}")
            id_maps.append(ids)
        if any(f.shape != frames[0].shape for f in frames):
            raise BadSample(f"video {self.name}: its frames do not all have one size")
        ids = torch.stack(id_maps)
        present = sorted(int(v) for v in torch.unique(ids).tolist() if v not in (0, 255))
        if self.object_ids is not None:
            present = [v for v in present if v in self.object_ids]
        masks = ids[:, None] == torch.tensor(present, dtype=torch.long).view(1, -1, 1, 1)
        return torch.stack(frames), masks, present

    def _load_sav(self, positions: list[int]) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        masklets, ids = _read_sav_json(self.annotation)
        try:
            video = open_video(self.source)
            try:
                frames = [torch.from_numpy(np.ascontiguousarray(video.frame(self.frame_indices[p])))
                          for p in positions]
            finally:
                getattr(video, "close", lambda: None)()
        except MaskmlError as exc:
            raise BadSample(f"{self.source}: {exc}") from None
        try:
            masks = torch.stack([torch.stack([decode_rle(rle) for rle in masklets[p]]) for p in positions])
        except (MaskmlError, KeyError, TypeError, ValueError) as exc:
            raise BadSample(f"{self.annotation}: unreadable masklet RLE ({exc})") from None
        if masks.shape[-2:] != frames[0].shape[:2]:
            raise BadSample(f"{self.annotation}: masks are {masks.shape[-1]} x {masks.shape[-2]} but the frames of "
                            f"{self.source} are {frames[0].shape[1]} x {frames[0].shape[0]}")
        return torch.stack(frames), masks, ids


@functools.lru_cache(maxsize=4)
def _read_sav_json(path: Path) -> tuple[list[list[dict]], list[int]]:
    """SA-V annotation -> masklets (per annotated frame, one RLE per object) and the objects' ids."""
    try:
        data = json.loads(Path(path).read_text())
        masklets = data["masklet"]
        ids = [int(i) for i in data.get("masklet_id", range(len(masklets[0]) if masklets else 0))]
    except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
        raise BadSample(f"{path}: not a readable SA-V annotation ({exc})") from None
    return masklets, ids


def detect_layout(root: Path) -> str | None:
    if (root / "synth.json").is_file() and (root / "videos" / "JPEGImages").is_dir():
        return "synth"
    if (root / "JPEGImages").is_dir() and (root / "Annotations").is_dir():
        return "ytvos" if (root / "meta.json").is_file() else "davis"
    if _sav_annotations(root):
        return "sav"
    return None


def _sav_annotations(root: Path) -> list[Path]:
    """SA-V's <video>_manual.json files in root or one folder down (sav_train/sav_000/...)."""
    if not root.is_dir():
        return []
    return sorted(list(root.glob("*_manual.json")) + list(root.glob("*/*_manual.json")))


def _folder_videos(root: Path, skipped: list[str]) -> list[VideoRecord]:
    meta_objects: dict[str, list[int]] | None = None
    if (root / "meta.json").is_file():
        try:
            meta = json.loads((root / "meta.json").read_text())["videos"]
            meta_objects = {v: sorted(int(o) for o in info.get("objects", {})) for v, info in meta.items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise MaskmlError(f"{root / 'meta.json'} is not a readable YouTube-VOS meta.json ({exc}); fix or "
                              f"remove it (it is optional)") from None
    videos = []
    for folder in sorted(p for p in (root / "Annotations").iterdir() if p.is_dir() and not p.name.startswith(".")):
        name = folder.name
        if meta_objects is not None and name not in meta_objects:
            continue  # meta.json defines the split
        image_dir = root / "JPEGImages" / name
        masks = [p for p in folder.glob("*.png") if not p.name.startswith(".")]
        if not masks:
            skipped.append(f"{folder}: no mask PNGs")
            continue
        if not image_dir.is_dir():
            skipped.append(f"{folder}: no frame folder {image_dir}")
            continue
        images = {p.stem: p for p in image_dir.iterdir()
                  if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")}
        unpaired = [m for m in masks if m.stem not in images]
        if unpaired:
            skipped.append(f"{unpaired[0]}: a mask without its frame in {image_dir} ({len(unpaired)} of "
                           f"{len(masks)} masks): masks and frames do not pair up")
            continue
        masks = in_frame_order(masks)
        videos.append(VideoRecord(name, [m.stem for m in masks], [images[m.stem] for m in masks], masks,
                                  object_ids=None if meta_objects is None else meta_objects[name]))
    return videos


def _sav_videos(root: Path, skipped: list[str]) -> list[VideoRecord]:
    videos = []
    for annotation in _sav_annotations(root):
        name = annotation.name[:-len("_manual.json")]
        folder = annotation.parent
        frames_dir = next((d for d in (folder / name, root / "JPEGImages_24fps" / name) if d.is_dir()), None)
        source = frames_dir if frames_dir is not None else folder / f"{name}.mp4"
        if frames_dir is None and not source.is_file():
            skipped.append(f"{annotation}: neither {source} nor a frame folder {folder / name} next to it")
            continue
        try:
            masklets, _ = _read_sav_json(annotation)
        except BadSample as exc:
            skipped.append(str(exc))
            continue
        count = len(masklets)
        indices = [SAV_STEP * k for k in range(count)]
        videos.append(VideoRecord(name, [f"{i:05d}" for i in indices], annotation=annotation, source=source,
                                  frame_indices=indices))
    return videos


def open_videos(root: str | Path, layout: str = "auto", min_frames: int = 1) -> tuple[list[VideoRecord], list[str]]:
    """The videos at `root` with at least `min_frames` annotated frames, and the messages of those left out."""
    root = Path(root)
    if not root.exists():
        raise MaskmlError(f"video data path {root} does not exist")
    found = detect_layout(root)
    if layout == "auto":
        if found is None:
            raise MaskmlError(f"video data folder {root} is in none of the known layouts: JPEGImages/<video>/ + "
                              f"Annotations/<video>/ (DAVIS, YouTube-VOS, MOSE), SA-V's <video>_manual.json next to "
                              f"<video>.mp4, or the output of `maskml data synth --videos N`")
        layout = found
    elif layout not in VIDEO_LAYOUTS:
        raise MaskmlError(f"unknown video layout {layout!r}; known: auto, {', '.join(VIDEO_LAYOUTS)}")
    elif (layout == "sav") != (found == "sav") or found is None:
        raise MaskmlError(f"{root} is not in the {layout} layout (it looks like {found or 'none of them'}); use "
                          f"layout=auto")
    skipped: list[str] = []
    if layout == "sav":
        videos = _sav_videos(root, skipped)
    else:
        videos = _folder_videos(root / "videos" if found == "synth" else root, skipped)
    short = [v for v in videos if len(v) < min_frames]
    skipped += [f"{root}/{v.name}: {len(v)} annotated frames, fewer than the {min_frames} a clip needs"
                for v in short]
    videos = [v for v in videos if len(v) >= min_frames]
    if not videos:
        detail = f"; left out: {'; '.join(skipped[:3])}" if skipped else ""
        raise MaskmlError(f"{root} ({layout} layout) holds no usable video{detail}")
    return videos, skipped


def split_videos(videos: list[VideoRecord], held_out: int) -> tuple[list[VideoRecord], list[VideoRecord]]:
    """(training videos, the last `held_out` videos in name order) for validation on videos never trained on."""
    if held_out <= 0:
        return videos, []
    if held_out >= len(videos):
        raise MaskmlError(f"data.val_videos={held_out} would hold out all {len(videos)} videos: leave some to train on")
    return videos[:-held_out], videos[-held_out:]


def warn_skipped(skipped: list[str], where: str) -> None:
    if skipped:
        shown = "; ".join(skipped[:5]) + ("; ..." if len(skipped) > 5 else "")
        warnings.warn(f"{len(skipped)} videos of {where} left out: {shown}", stacklevel=2)


# ------------------------------------------------------------------------------------------ augmentation

def affine_matrix(g: torch.Generator, degrees: float, shear: float, scale: tuple[float, float],
                  centre: tuple[float, float]) -> torch.Tensor:
    """3 x 3 pixel-coordinate map of a random rotation, x-shear and zoom about `centre` (torchvision's
    RandomAffine: rotation in [-degrees, degrees], shear in [-shear, shear], scale in `scale`)."""
    angle = math.radians(uniform(g, -degrees, degrees))
    sh = math.radians(uniform(g, -shear, shear))
    s = uniform(g, *scale)
    cx, cy = centre
    to_origin = torch.tensor([[1.0, 0, -cx], [0, 1, -cy], [0, 0, 1]])
    back = torch.tensor([[1.0, 0, cx], [0, 1, cy], [0, 0, 1]])
    rotate = torch.tensor([[math.cos(angle), -math.sin(angle), 0], [math.sin(angle), math.cos(angle), 0], [0, 0, 1]])
    shear_x = torch.tensor([[1.0, math.tan(sh), 0], [0, 1, 0], [0, 0, 1]])
    return back @ (rotate @ shear_x * torch.tensor([[s], [s], [1.0]])) @ to_origin


def crop_matrix(box: tuple[float, float, float, float], out: tuple[int, int]) -> torch.Tensor:
    """3 x 3 map of the box (x0, y0, w, h) onto an out = (H, W) image."""
    x0, y0, w, h = box
    return torch.tensor([[out[1] / w, 0, -x0 * out[1] / w], [0, out[0] / h, -y0 * out[0] / h], [0, 0, 1.0]])


def random_resized_box(g: torch.Generator, h: int, w: int, scale: tuple[float, float],
                       ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> tuple[float, float, float, float]:
    """torchvision's RandomResizedCrop box: area share in `scale`, aspect ratio in `ratio` (log-uniform)."""
    for _ in range(10):
        area = h * w * uniform(g, *scale)
        aspect = math.exp(uniform(g, math.log(ratio[0]), math.log(ratio[1])))
        cw, ch = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            return float(int(torch.randint(0, w - cw + 1, (), generator=g))), \
                float(int(torch.randint(0, h - ch + 1, (), generator=g))), float(cw), float(ch)
    side = min(h, w)
    return (w - side) / 2, (h - side) / 2, float(side), float(side)


def warp(images: torch.Tensor, masks: torch.Tensor, matrix: torch.Tensor, out: tuple[int, int],
         offsets: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(T, 3, H, W) float images and (T, K, H, W) bool masks mapped by the 3 x 3 pixel map `matrix` (input ->
    output pixels) to `out` = (H', W'): bilinear for images (FILL outside), nearest for masks (empty outside).
    offsets: (H', W', 2) x, y displacements (output pixels) of where each output pixel samples (elastic
    deformation after the map)."""
    t, _, h, w = images.shape
    inverse = torch.linalg.inv(matrix.double()).float()
    ys, xs = torch.meshgrid(torch.arange(out[0], dtype=torch.float32) + 0.5,
                            torch.arange(out[1], dtype=torch.float32) + 0.5, indexing="ij")
    centres = torch.stack([xs, ys], -1)
    if offsets is not None:
        centres = centres + offsets
    points = torch.cat([centres, torch.ones_like(xs)[..., None]], -1) @ inverse.T  # sampled places in the input
    grid = torch.stack([points[..., 0] / w * 2 - 1, points[..., 1] / h * 2 - 1], -1)[None].expand(t, -1, -1, -1)
    fill = torch.tensor(FILL, dtype=images.dtype).view(1, 3, 1, 1)
    warped = F.grid_sample(images - fill, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + fill
    warped_masks = F.grid_sample(masks.float(), grid, mode="nearest", padding_mode="zeros", align_corners=False) > 0.5
    return warped, warped_masks


def colour_jitter(images: torch.Tensor, g: torch.Generator, brightness: float, contrast: float, saturation: float,
                  hue: float = 0.0) -> torch.Tensor:
    """torchvision's ColorJitter on (T, 3, H, W) floats in [0, 255], one draw for all T (factors in
    [1 - x, 1 + x], hue shift in [-hue, hue] of a turn), in a random order of the four."""
    factors = [uniform(g, 1 - brightness, 1 + brightness), uniform(g, 1 - contrast, 1 + contrast),
               uniform(g, 1 - saturation, 1 + saturation), uniform(g, -hue, hue)]
    x = images
    for op in torch.randperm(4, generator=g).tolist():
        if op == 0:
            x = (x * factors[0]).clamp(0, 255)
        elif op == 1:
            mean = grey(x).mean(dim=(-3, -2, -1), keepdim=True)
            x = ((x - mean) * factors[1] + mean).clamp(0, 255)
        elif op == 2:
            gray = grey(x)
            x = ((x - gray) * factors[2] + gray).clamp(0, 255)
        elif hue > 0:
            x = rotate_hue(x, factors[3])
    return x


def grey(x: torch.Tensor) -> torch.Tensor:
    """ITU-R 601 luma, (…, 1, H, W)."""
    return (0.299 * x[..., 0:1, :, :] + 0.587 * x[..., 1:2, :, :] + 0.114 * x[..., 2:3, :, :])


def rotate_hue(x: torch.Tensor, turn: float) -> torch.Tensor:
    """Hue rotation by `turn` of a full turn, as a rotation about the grey axis (YIQ)."""
    angle = 2 * math.pi * turn
    c, s = math.cos(angle), math.sin(angle)
    to_yiq = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
    rot = torch.tensor([[1.0, 0, 0], [0, c, -s], [0, s, c]])
    m = torch.linalg.inv(to_yiq) @ rot @ to_yiq
    return torch.einsum("ij,...jhw->...ihw", m, x).clamp(0, 255)


def random_grayscale(images: torch.Tensor, g: torch.Generator, p: float) -> torch.Tensor:
    if float(torch.rand((), generator=g)) < p:
        return grey(images).expand_as(images).clone()
    return images


def first_frame_objects(masks: torch.Tensor, min_pixels: int) -> torch.Tensor:
    """Indices of the objects of (T, K, H, W) masks with at least min_pixels in the first frame."""
    return (masks[0].flatten(1).sum(1) >= min_pixels).nonzero().flatten()


def pick_objects(masks: torch.Tensor, ids: list[int], g: torch.Generator, max_objects: int, min_pixels: int
                 ) -> tuple[torch.Tensor, list[int]]:
    """The objects visible in the first frame (at least min_pixels), at most max_objects of them at random."""
    visible = first_frame_objects(masks, min_pixels)
    if len(visible) > max_objects:
        visible = visible[torch.randperm(len(visible), generator=g)[:max_objects]].sort().values
    return masks[:, visible], [ids[i] for i in visible.tolist()]


def gaussian_blur(masks: torch.Tensor, sigma: float, size: int = MERGE_BLUR_SIZE) -> torch.Tensor:
    """(T, 1, H, W) float masks blurred by a size x size Gaussian (borders mirrored without repeating the edge
    pixel, as OpenCV's default)."""
    offsets = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    line = torch.exp(-offsets**2 / (2 * sigma**2))
    line = line / line.sum()
    kernel = (line[:, None] * line[None, :]).view(1, 1, size, size)
    padded = F.pad(masks, [size // 2] * 4, mode="reflect")
    return F.conv2d(padded, kernel)


def paste_objects(frames: torch.Tensor, masks: torch.Tensor, pasted_frames: torch.Tensor, pasted_masks: torch.Tensor,
                  blur_sigma: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The objects of a second clip laid over a clip, in order: each of pasted_masks' objects (T, J, S, S) brings
    its pixels of pasted_frames (T, 3, S, S) over frames (T, 3, S, S) uint8, through its mask blurred by a
    Gaussian of blur_sigma (a soft edge; None: the hard mask), and takes its pixels from every object before it.
    Returns the frames and the masks (T, K + J, S, S) of the K objects of `masks`, then the J pasted ones."""
    out = frames.float()
    for j in range(pasted_masks.shape[1]):
        mask = pasted_masks[:, j:j + 1]
        alpha = mask.float() if blur_sigma is None else gaussian_blur(mask.float(), blur_sigma)
        out = out * (1 - alpha) + pasted_frames.float() * alpha
        masks = torch.cat([masks & ~mask, mask], 1)
    return out.round().clamp(0, 255).to(torch.uint8), masks


# ------------------------------------------------------------------------------------------ datasets

class VideoClips(Dataset):
    """Training clips; `sample(index, seed, step)` draws everything from `seed` (see the module docstring).

    gap_schedule: (first optimizer step, max_gap) pairs, the first at step 0, used instead of max_gap (Cutie's
    max_skip curriculum); an item of step s takes the gap of the last pair that starts at or before s.
    merge_probability: the chance that a clip with fewer than max_objects objects gets the objects of a second
    clip pasted on (Cutie's merged videos)."""

    max_clip_tries = 5  # clips tried from one item before the next item's video
    max_crop_tries = 5  # crops of one clip tried for a first frame with an object

    def __init__(self, videos: list[VideoRecord], num_frames: int = 8, max_objects: int = 3, size: int = 480,
                 max_gap: int = 5, on_error: str = "skip", min_pixels: int = 4, reverse: float = 0.5,
                 gap_schedule: list[tuple[int, int]] | None = None, merge_probability: float = 0.0) -> None:
        if on_error not in ("skip", "stop"):
            raise MaskmlError(f"data.on_error must be skip or stop, got {on_error!r}")
        self.gap_schedule = [(int(first), int(gap)) for first, gap in gap_schedule] if gap_schedule else [(0, max_gap)]
        smallest_gap = min(gap for _, gap in self.gap_schedule)
        if num_frames < 1 or max_objects < 1 or smallest_gap < 1:
            raise MaskmlError(f"clips need num_frames, max_objects and max_gap >= 1 (got {num_frames}, {max_objects}, "
                              f"{smallest_gap})")
        usable = [v for v in videos if len(v) >= num_frames]
        if not usable:
            raise MaskmlError(f"no video has the {num_frames} annotated frames a clip needs (the longest has "
                              f"{max((len(v) for v in videos), default=0)}); lower recipe.num_frames")
        self.videos = usable
        self.num_frames, self.max_objects, self.size = num_frames, max_objects, size
        self.on_error, self.min_pixels, self.reverse = on_error, min_pixels, reverse
        self.merge_probability = merge_probability
        self.items = [(v, p) for v, video in enumerate(usable) for p in range(len(video))]
        self.bad: dict[int, str] = {}  # video index -> why it was skipped (this process's count)

    def __len__(self) -> int:
        return len(self.items)

    def gap_at(self, step: int) -> int:
        """The max_gap of the items of optimizer step `step`."""
        gap = self.gap_schedule[0][1]
        for first, later_gap in self.gap_schedule[1:]:
            if first <= step:
                gap = later_gap
        return gap

    def positions(self, length: int, start: int, g: torch.Generator, max_gap: int) -> list[int]:
        """num_frames distinct positions grown from `start`, each new one within max_gap of the previous
        one taken (Cutie's acceptable set), in time order, reversed with probability `reverse`."""
        gap = min(length, max_gap)
        taken = [start]
        allowed = set(range(max(0, start - gap), min(length, start + gap + 1))) - {start}
        while len(taken) < self.num_frames:
            choices = sorted(allowed)
            pick = choices[int(torch.randint(len(choices), (), generator=g))]
            taken.append(pick)
            allowed |= set(range(max(0, pick - gap), min(length, pick + gap + 1)))
            allowed -= set(taken)
        taken.sort()
        if float(torch.rand((), generator=g)) < self.reverse:
            taken.reverse()
        return taken

    def augment(self, frames: torch.Tensor, masks: torch.Tensor, g: torch.Generator
                ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(T, H, W, 3) uint8 + (T, K, H, W) -> the clip's transform (Cutie's values), or None when no crop
        leaves an object in the first frame."""
        images = frames.permute(0, 3, 1, 2).float()
        h, w = images.shape[-2:]
        for _ in range(self.max_crop_tries):
            flip = float(torch.rand((), generator=g)) < 0.5
            matrix = affine_matrix(g, 25.0, 20.0, (1.0, 1.0), (w / 2, h / 2))
            if flip:
                matrix = matrix @ torch.tensor([[-1.0, 0, w], [0, 1, 0], [0, 0, 1]])
            box = random_resized_box(g, h, w, (0.36, 1.0))
            matrix = crop_matrix(box, (self.size, self.size)) @ matrix
            out_images, out_masks = warp(images, masks, matrix, (self.size, self.size))
            if out_masks[0].flatten(1).sum(1).ge(self.min_pixels).any():
                break
        else:
            return None
        out_images = colour_jitter(out_images, g, 0.1, 0.03, 0.03)
        out_images = random_grayscale(out_images, g, 0.05)
        out_images = torch.stack([colour_jitter(frame, g, 0.1, 0.05, 0.05) for frame in out_images])
        return out_images.round().clamp(0, 255).to(torch.uint8), out_masks

    def sample(self, index: int, seed: int, step: int = 0) -> dict:
        """The clip of item `index` at optimizer step `step` (its gap in the schedule), merged with a second
        clip with probability merge_probability while it has fewer than max_objects objects."""
        g = torch.Generator().manual_seed(seed)
        max_gap = self.gap_at(step)
        name, frame_names, frames, masks, ids = self._clip(index, g, max_gap)
        # merge_probability=0 draws nothing more: its clips are exactly those of a sampler that never merges
        if self.merge_probability > 0 and len(first_frame_objects(masks, self.min_pixels)) < self.max_objects \
                and float(torch.rand((), generator=g)) < self.merge_probability:
            other = int(torch.randint(len(self.items), (), generator=g))
            other_name, _, other_frames, other_masks, _ = self._clip(other, g, max_gap)
            pasted = other_masks[:, first_frame_objects(other_masks, self.min_pixels)]
            frames, masks = paste_objects(frames, masks, other_frames, pasted, MERGE_BLUR_SIGMA)
            ids = ids + [max(ids) + 1 + j for j in range(pasted.shape[1])]
            name = f"{name}+{other_name}"
        # objects the pasted ones covered in the first frame are no longer targets
        masks, ids = pick_objects(masks, ids, g, self.max_objects, self.min_pixels)
        return {"frames": frames, "masks": masks, "obj_ids": ids, "seed": seed, "name": name,
                "frame_names": frame_names}

    def _clip(self, index: int, g: torch.Generator, max_gap: int
              ) -> tuple[str, list[str], torch.Tensor, torch.Tensor, list[int]]:
        """An augmented clip from item `index` (or, when it gives none, from other items): its name, frame names,
        (T, 3, S, S) uint8 frames, (T, K, S, S) masks of all its objects, and their ids."""
        v, start = self.items[index]
        for _ in range(len(self.videos) + 10):
            video = self.videos[v]
            if v not in self.bad:
                for _ in range(self.max_clip_tries):
                    positions = self.positions(len(video), start, g, max_gap)
                    try:
                        frames, masks, ids = video.load(positions)
                    except BadSample as exc:
                        self._skip(v, str(exc))
                        break
                    out = self.augment(frames, masks, g) if ids else None
                    if out is not None:
                        return (f"{video.name}/{video.frame_names[positions[0]]}",
                                [video.frame_names[p] for p in positions], out[0], out[1], ids)
                    start = int(torch.randint(len(video), (), generator=g))
            # this video gave no clip: a random frame of a readable one
            readable = [i for i, (u, _) in enumerate(self.items) if u not in self.bad] if self.bad else self.items
            pick = int(torch.randint(len(readable), (), generator=g))
            v, start = self.items[readable[pick]] if self.bad else self.items[pick]
        raise MaskmlError(f"no clip with an object in its first frame could be drawn from {len(self.videos)} videos "
                          f"({len(self.bad)} unreadable); check the annotations")

    def _skip(self, v: int, message: str) -> None:
        if self.on_error == "stop":
            raise MaskmlError(f"bad video: {message} (set data.on_error=skip to skip such videos)")
        self.bad[v] = message
        warnings.warn(f"skipping video {self.videos[v].name} ({len(self.bad)} so far): {message}", stacklevel=3)
        if len(self.bad) == len(self.videos):
            raise MaskmlError(f"every video is unreadable ({len(self.bad)} skipped); see the warnings above")

    def __getitem__(self, index: int) -> dict:
        return self.sample(index, index)


def resize_short_side(frames: torch.Tensor, masks: torch.Tensor, size: int | None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """(T, 3, H, W) uint8 + (T, K, H, W) bool with the shorter side resized to `size` (None: unchanged)."""
    h, w = frames.shape[-2:]
    if size is None or min(h, w) == size:
        return frames, masks
    out = (round(h * size / min(h, w)), round(w * size / min(h, w)))
    resized = F.interpolate(frames.float(), out, mode="bilinear", align_corners=False, antialias=True)
    resized_masks = F.interpolate(masks.float(), out, mode="nearest-exact") > 0.5 if masks.shape[1] else \
        masks.new_zeros(*masks.shape[:2], *out)
    return resized.round().clamp(0, 255).to(torch.uint8), resized_masks


class HeldOutVideos(Dataset):
    """Whole videos for semi-supervised evaluation: {"frames": (T, 3, H, W) uint8, "masks": (T, N, H, W) bool
    of the objects of the first frame, "obj_ids", "name", "frame_names"}, shorter side resized to `size`
    (None: as stored). Unreadable videos: a MaskmlError naming the file (validation data must all be good)."""

    def __init__(self, videos: list[VideoRecord], size: int | None = None, max_frames: int | None = None) -> None:
        self.videos, self.size, self.max_frames = videos, size, max_frames

    def __len__(self) -> int:
        return len(self.videos)

    def __getitem__(self, index: int) -> dict:
        video = self.videos[index]
        count = len(video) if self.max_frames is None else min(len(video), self.max_frames)
        try:
            frames, masks, ids = video.load(list(range(count)))
        except BadSample as exc:
            raise MaskmlError(f"validation video {video.name}: {exc}") from None
        first = masks[0].flatten(1).any(1)
        masks, ids = masks[:, first], [i for i, keep in zip(ids, first.tolist()) if keep]
        frames, masks = resize_short_side(frames.permute(0, 3, 1, 2), masks, self.size)
        return {"frames": frames, "masks": masks, "obj_ids": ids, "name": video.name,
                "frame_names": video.frame_names[:count]}
