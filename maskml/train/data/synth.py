"""Synthetic scenes with exact masks, so every pipeline runs offline and learning can be measured.

Each object is a random shape (ellipse, rectangle, ring, wobbly blob, star) filled with a random texture
(flat colour with noise, stripes, checks, smooth colour noise, or a crop of a real photo: a cut-out), placed
by an affine map (position, scale, rotation) over a textured or photographic background. Objects are
painted back to front, so later ones occlude earlier ones and each mask is what stays visible. In videos
the map changes with time: objects move, grow or shrink, turn, enter and leave the frame.

Everything is drawn with torch; sample k of a kind is drawn from a generator seeded by (seed, kind, k)
alone, so a sample does not depend on the others (a resumed or partial run writes the same files).

Layouts written (the ones maskml's readers take):
    OUT/images/sa_000000.jpg + sa_000000.json      SA-1B: COCO RLE masks in "annotations"
    OUT/videos/JPEGImages/v_0000/00000.jpg         DAVIS: frames
    OUT/videos/Annotations/v_0000/00000.png        DAVIS: indexed PNGs, palette index = object id
    OUT/synth.json                                 the arguments; marks the folder as this generator's
"""
from __future__ import annotations

import json
import math
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from maskml.errors import MaskmlError
from maskml.io.images import atomic_path, atomic_paths, read_image, save_image
from maskml.io.masks import save_mask
from maskml.io.rle import compress_rle, encode_rle
from maskml.io.outputs import atomic_dir

MANIFEST = "synth.json"
JPEG_OPTIONS = {"quality": 95, "subsampling": 0}  # Pillow's defaults (75, 4:2:0) blur small textured objects
PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png")
SHAPES = ("ellipse", "rectangle", "ring", "blob", "star")


@dataclass
class SynthConfig:
    images: int = 0
    videos: int = 0
    seed: int = 0
    width: int = 320
    height: int = 240
    frames: int = 24  # per video
    min_objects: int = 2
    max_objects: int = 6
    min_area: float = 0.002  # of the image: smaller visible parts are not annotated
    photos: list[str] = field(default_factory=list)  # image files for cut-outs and backgrounds


def _generator(seed: int, kind: str, index: int) -> torch.Generator:
    return torch.Generator().manual_seed(zlib.crc32(f"{seed}/{kind}/{index}".encode()))


def _uniform(g: torch.Generator, lo: float = 0.0, hi: float = 1.0) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=g))


def _randint(g: torch.Generator, lo: int, hi: int) -> int:
    """lo..hi inclusive."""
    return int(torch.randint(lo, hi + 1, (), generator=g))


def _smooth_noise(g: torch.Generator, channels: int, h: int, w: int, cells: int) -> torch.Tensor:
    """(channels, h, w) in [0, 1]: a random cells x cells grid, bicubically upsampled."""
    grid = torch.rand(1, channels, cells, cells, generator=g)
    return F.interpolate(grid, (h, w), mode="bicubic", align_corners=False)[0].clamp(0, 1)


def _texture(g: torch.Generator, size: int, photos: list[torch.Tensor]) -> torch.Tensor:
    """(3, size, size) float RGB in [0, 1]."""
    kinds = 5 if photos else 4
    kind = _randint(g, 0, kinds - 1)
    base = torch.rand(3, 1, 1, generator=g)
    if kind == 0:  # flat colour with grain
        return (base + 0.08 * torch.randn(3, size, size, generator=g)).clamp(0, 1)
    if kind in (1, 2):  # stripes or checks in two colours
        other = torch.rand(3, 1, 1, generator=g)
        period = _uniform(g, 4, 16)
        angle = _uniform(g, 0, math.pi)
        ys, xs = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32),
                                indexing="ij")
        u = xs * math.cos(angle) + ys * math.sin(angle)
        v = -xs * math.sin(angle) + ys * math.cos(angle)
        phase = torch.floor(u / period) if kind == 1 else torch.floor(u / period) + torch.floor(v / period)
        pick = (phase.remainder(2) == 0).float()
        return base * pick + other * (1 - pick)
    if kind == 3:  # smooth colour noise around a base colour
        return (0.6 * base + 0.4 * _smooth_noise(g, 3, size, size, _randint(g, 2, 6))).clamp(0, 1)
    photo = photos[_randint(g, 0, len(photos) - 1)]
    _, ph, pw = photo.shape
    crop = _randint(g, max(8, min(ph, pw) // 6), min(ph, pw))
    y0, x0 = _randint(g, 0, ph - crop), _randint(g, 0, pw - crop)
    patch = photo[:, y0:y0 + crop, x0:x0 + crop][None]
    return F.interpolate(patch, (size, size), mode="bilinear", align_corners=False)[0]  # aliasing is texture too


def _shape(kind: str, g: torch.Generator) -> dict:
    """Parameters of a shape in object coordinates (u, v) in [-1, 1]."""
    if kind in ("ellipse", "rectangle"):
        return {"kind": kind, "a": _uniform(g, 0.4, 1.0), "b": _uniform(g, 0.4, 1.0)}
    if kind == "ring":
        return {"kind": kind, "inner": _uniform(g, 0.3, 0.6)}
    if kind == "blob":
        return {"kind": kind, "amp": (torch.rand(4, generator=g) * 0.18).tolist(),
                "phase": (torch.rand(4, generator=g) * 2 * math.pi).tolist()}
    return {"kind": kind, "spikes": _randint(g, 4, 8), "depth": _uniform(g, 0.25, 0.5)}


def _inside(shape: dict, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    kind = shape["kind"]
    if kind == "ellipse":
        return (u / shape["a"]) ** 2 + (v / shape["b"]) ** 2 < 1
    if kind == "rectangle":
        return (u.abs() < shape["a"]) & (v.abs() < shape["b"])
    r = torch.sqrt(u * u + v * v)
    if kind == "ring":
        return (r < 0.95) & (r > shape["inner"])
    theta = torch.atan2(v, u)
    if kind == "blob":
        radius = 0.7 * torch.ones_like(theta)
        for k, (amp, phase) in enumerate(zip(shape["amp"], shape["phase"]), start=2):
            radius = radius + 0.7 * amp * torch.cos(k * theta + phase)
        return r < radius
    return r < 0.95 * (1 - shape["depth"] * (0.5 + 0.5 * torch.cos(shape["spikes"] * theta)))


@dataclass
class _Object:
    shape: dict
    texture: torch.Tensor  # (3, S, S)
    center: tuple[float, float]  # (x, y) pixels at time 0
    velocity: tuple[float, float]  # pixels per frame
    radius: float  # half the side of the object's square, pixels, at time 0
    growth: float  # radius factor per frame
    angle: float
    spin: float  # radians per frame

    def pose(self, t: int) -> tuple[float, float, float, float]:
        cx = self.center[0] + self.velocity[0] * t
        cy = self.center[1] + self.velocity[1] * t
        return cx, cy, self.radius * self.growth ** t, self.angle + self.spin * t


def _random_object(g: torch.Generator, cfg: SynthConfig, photos: list[torch.Tensor], video: bool) -> _Object:
    side = min(cfg.width, cfg.height)
    radius = side * math.exp(_uniform(g, math.log(0.06), math.log(0.35)))  # sizes spread over a wide range
    texture = _texture(g, 64, photos)
    shape = _shape(SHAPES[_randint(g, 0, len(SHAPES) - 1)], g)
    center = (_uniform(g, 0, cfg.width), _uniform(g, 0, cfg.height))
    velocity, growth, spin = (0.0, 0.0), 1.0, 0.0
    if video:
        if _uniform(g) < 0.3:  # enters: starts beyond a random edge, heading for a point in the frame
            target = center
            edge = _randint(g, 0, 3)
            margin = radius * 1.5
            center = [(-margin, target[1]), (cfg.width + margin, target[1]), (target[0], -margin),
                      (target[0], cfg.height + margin)][edge]
            frames_to_target = max(1.0, cfg.frames * _uniform(g, 0.4, 0.9))
            velocity = ((target[0] - center[0]) / frames_to_target, (target[1] - center[1]) / frames_to_target)
        else:
            speed = side * _uniform(g, 0.0, 0.04)
            heading = _uniform(g, 0, 2 * math.pi)
            velocity = (speed * math.cos(heading), speed * math.sin(heading))
        growth = math.exp(_uniform(g, -0.03, 0.03))
        spin = _uniform(g, -0.05, 0.05)
    return _Object(shape, texture, center, velocity, radius, growth, _uniform(g, 0, 2 * math.pi), spin)


def _render(objects: list[_Object], background: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Frame t: (3, H, W) float image, (H, W) int64 ids (0 background, k + 1 for objects[k])."""
    image = background.clone()
    _, h, w = image.shape
    ids = torch.zeros(h, w, dtype=torch.int64)
    for k, obj in enumerate(objects):
        cx, cy, radius, angle = obj.pose(t)
        reach = radius * math.sqrt(2)  # the object's square, turned, stays within this distance of its centre
        x0, x1 = max(0, math.floor(cx - reach)), min(w, math.ceil(cx + reach))
        y0, y1 = max(0, math.floor(cy - reach)), min(h, math.ceil(cy + reach))
        if x1 <= x0 or y1 <= y0:
            continue  # outside the frame
        ys, xs = torch.meshgrid(torch.arange(y0, y1, dtype=torch.float32) + 0.5,
                                torch.arange(x0, x1, dtype=torch.float32) + 0.5, indexing="ij")
        dx, dy = (xs - cx) / radius, (ys - cy) / radius
        cos, sin = math.cos(angle), math.sin(angle)
        u, v = cos * dx + sin * dy, -sin * dx + cos * dy
        inside = _inside(obj.shape, u, v)
        if not inside.any():
            continue
        grid = torch.stack([u, v], dim=-1)[None]
        colour = F.grid_sample(obj.texture[None], grid, mode="bilinear", padding_mode="reflection",
                               align_corners=False)[0]
        window = image[:, y0:y1, x0:x1]
        image[:, y0:y1, x0:x1] = torch.where(inside, colour, window)
        ids[y0:y1, x0:x1][inside] = k + 1
    return image, ids


def _background(g: torch.Generator, h: int, w: int, photos: list[torch.Tensor]) -> torch.Tensor:
    """(3, h, w) in [0, 1]: a photo crop when photos are given (half the time), else a texture."""
    if photos and _uniform(g) < 0.5:
        photo = photos[_randint(g, 0, len(photos) - 1)]
        _, ph, pw = photo.shape
        scale = _uniform(g, max(h / ph, w / pw), max(h / ph, w / pw) * 2)
        crop_h, crop_w = min(ph, math.ceil(h / scale)), min(pw, math.ceil(w / scale))
        y0, x0 = _randint(g, 0, ph - crop_h), _randint(g, 0, pw - crop_w)
        patch = photo[:, y0:y0 + crop_h, x0:x0 + crop_w][None]
        return F.interpolate(patch, (h, w), mode="bilinear", align_corners=False, antialias=True)[0]
    side = max(h, w)
    return _texture(g, side, [])[:, :h, :w]


def _to_uint8(image: torch.Tensor) -> np.ndarray:
    return (image * 255).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()


def synth_image(cfg: SynthConfig, index: int, photos: list[torch.Tensor]) -> tuple[np.ndarray, torch.Tensor]:
    """Image `index`: H x W x 3 uint8 and (N, H, W) bool masks of the objects left visible enough."""
    g = _generator(cfg.seed, "image", index)
    background = _background(g, cfg.height, cfg.width, photos)
    objects = [_random_object(g, cfg, photos, video=False)
               for _ in range(_randint(g, cfg.min_objects, cfg.max_objects))]
    image, ids = _render(objects, background, 0)
    masks = ids[None] == torch.arange(1, len(objects) + 1)[:, None, None]
    keep = masks.flatten(1).sum(1) >= max(1, cfg.min_area * cfg.width * cfg.height)
    return _to_uint8(image), masks[keep]


def synth_video(cfg: SynthConfig, index: int, photos: list[torch.Tensor]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Video `index`: frames (H x W x 3 uint8) and object-id maps (H x W uint8, ids stable over time)."""
    g = _generator(cfg.seed, "video", index)
    pad = max(cfg.width, cfg.height) // 4
    background = _background(g, cfg.height + 2 * pad, cfg.width + 2 * pad, photos)
    pan = (_uniform(g, -1, 1) * pad / cfg.frames, _uniform(g, -1, 1) * pad / cfg.frames)  # camera drift
    objects = [_random_object(g, cfg, photos, video=True)
               for _ in range(_randint(g, cfg.min_objects, cfg.max_objects))]
    frames, id_maps = [], []
    min_pixels = max(1, cfg.min_area * cfg.width * cfg.height)
    for t in range(cfg.frames):
        y0, x0 = pad + round(pan[1] * t), pad + round(pan[0] * t)
        image, ids = _render(objects, background[:, y0:y0 + cfg.height, x0:x0 + cfg.width], t)
        counts = torch.bincount(ids.flatten(), minlength=len(objects) + 1)
        ids[(counts < min_pixels)[ids]] = 0  # slivers of objects are not annotated
        frames.append(_to_uint8(image))
        id_maps.append(ids.to(torch.uint8).numpy())
    return frames, id_maps


def _load_photos(paths: list[str]) -> list[torch.Tensor]:
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(f for f in p.iterdir() if f.suffix.lower() in PHOTO_SUFFIXES)
        elif p.is_file():
            files.append(p)
        else:
            raise MaskmlError(f"photo path {p} does not exist (give image files or folders of them)")
    return [torch.from_numpy(read_image(f)).permute(2, 0, 1).float() / 255 for f in files]


def sa1b_annotations(masks: torch.Tensor, image_id: int, file_name: str) -> dict:
    """The SA-1B JSON of one image: "image" and "annotations" with compressed COCO RLE."""
    n, h, w = masks.shape
    annotations = []
    for k, (rle, mask) in enumerate(zip(encode_rle(masks), masks)):
        ys, xs = mask.nonzero(as_tuple=True)
        x0, y0 = int(xs.min()), int(ys.min())
        annotations.append({"id": image_id * 1000 + k, "segmentation": compress_rle(rle), "area": int(mask.sum()),
                            "bbox": [x0, y0, int(xs.max()) - x0 + 1, int(ys.max()) - y0 + 1]})
    return {"image": {"image_id": image_id, "file_name": file_name, "width": w, "height": h},
            "annotations": annotations}


def _prepare_output(out_dir: Path, cfg: SynthConfig) -> None:
    """Refuse a non-empty folder this generator did not make, or one made with other arguments."""
    manifest = out_dir / MANIFEST
    if out_dir.exists() and not out_dir.is_dir():
        raise MaskmlError(f"output {out_dir} is a file: give a folder name")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not manifest.is_file():
            raise MaskmlError(f"output folder {out_dir} is not empty and was not made by `maskml data synth` "
                              f"(no {MANIFEST}): give a new or empty folder")
        previous = json.loads(manifest.read_text())
        if previous != asdict(cfg):
            raise MaskmlError(f"{out_dir} holds synthetic data made with other arguments ({previous}); "
                              f"give a new folder, or the same arguments to complete it")
        return
    with atomic_path(manifest) as tmp:
        tmp.write_text(json.dumps(asdict(cfg), indent=1))


def generate(out_dir: str | Path, cfg: SynthConfig, progress: bool = True) -> dict[str, int]:
    """Write cfg.images images and cfg.videos videos under out_dir; files already complete (from an
    interrupted run with the same arguments) are kept. Returns how many of each were written now."""
    out_dir = Path(out_dir)
    if cfg.images < 0 or cfg.videos < 0 or cfg.images + cfg.videos == 0:
        raise MaskmlError("nothing to generate: give --images N and/or --videos M (positive)")
    if cfg.width < 32 or cfg.height < 32 or cfg.frames < 1 or not 1 <= cfg.min_objects <= cfg.max_objects <= 255:
        raise MaskmlError("sizes must be at least 32 pixels, frames at least 1, and 1 <= min_objects <= "
                          "max_objects <= 255")
    photos = _load_photos(cfg.photos)
    _prepare_output(out_dir, cfg)
    written = {"images": 0, "videos": 0}
    with tqdm(total=cfg.images + cfg.videos, unit="sample", desc="synthesising", disable=not progress) as bar:
        for i in range(cfg.images):
            stem = out_dir / "images" / f"sa_{i:06d}"
            jpg, js = stem.with_suffix(".jpg"), stem.with_suffix(".json")
            if not (jpg.is_file() and js.is_file()):
                image, masks = synth_image(cfg, i, photos)
                with atomic_paths(jpg, js) as (tmp_jpg, tmp_json):
                    save_image(tmp_jpg, image, "JPEG", **JPEG_OPTIONS)
                    tmp_json.write_text(json.dumps(sa1b_annotations(masks, i, jpg.name)))
                written["images"] += 1
            bar.update()
        for i in range(cfg.videos):
            name = f"v_{i:04d}"
            frames_dir = out_dir / "videos" / "JPEGImages" / name
            masks_dir = out_dir / "videos" / "Annotations" / name
            if not (frames_dir.is_dir() and masks_dir.is_dir()):
                frames, id_maps = synth_video(cfg, i, photos)
                # masks first: a video counts as complete once its frames folder exists
                with atomic_dir(masks_dir) as tmp:
                    for t, ids in enumerate(id_maps):
                        save_mask(tmp / f"{t:05d}.png", ids)
                with atomic_dir(frames_dir) as tmp:
                    for t, frame in enumerate(frames):
                        save_image(tmp / f"{t:05d}.jpg", frame, "JPEG", **JPEG_OPTIONS)
                written["videos"] += 1
            bar.update()
    return written
