"""Speed and memory of SAM 2 / SAM 2.1: images (encoder, per prompt) and video propagation.

    python benchmarks/bench_sam2.py                                  # maskml only
    python benchmarks/bench_sam2.py --official-src /tmp/sam2-ref     # also facebookresearch/sam2, side by side
    python benchmarks/bench_sam2.py --stream 1000 --parts            # resident memory over a long stream only
    python benchmarks/bench_sam2.py --compile                        # also maskml with its image encoder compiled
    python benchmarks/bench_sam2.py --device cuda --compile --official-src /tmp/sam2-ref   # the GPU rows

--official-src is a checkout of facebookresearch/sam2 (or a folder holding one as `facebookresearch+sam2`
or `sam2`); its video predictor needs hydra-core and omegaconf, and its backbone imports iopath only to
load weights from a path, so a stand-in module is used when iopath is not installed. Its image predictor
needs torchvision (for three transforms), so the image rows run the official model's own steps of
SAM2ImagePredictor.set_image / predict (to-tensor, antialiased resize to 1024 when needed, normalise,
forward_image, _prepare_backbone_features + no_mem_embed; prompt encoder, mask decoder, resize to the image)
without its final numpy conversion. Models are built from the official hydra configs with the default
options (build_sam2 / build_sam2_video_predictor, device cpu). Both implementations get the same
deterministic weights (those of the parity fixtures, tests/weights.py, with every object scored present, so
that the compared outputs are masks, not the constant "no object" logits; timing does not depend on the
values) and their outputs are compared.
Each (part, model, implementation, objects) runs in its own process, so peak memory is its own.
--compile adds "maskml+compile" rows: the image encoder compiled with torch.compile (nn.Module.compile, default
mode), paid for by the warm-up set_image or the prompted frame 0, outside the medians. The memory attention
stays eager: on CPU, compiled, it ran slower and recompiled for each memory-bank size. The official rows stay
as the official defaults leave them (compile_image_encoder: false).
--device cuda runs both implementations, their weights and their inputs on the GPU, in float32 as on the CPU;
every timing then waits for the queued GPU work (torch.cuda.synchronize) before it stops the clock, and rows
add the peak GPU memory (torch.cuda.max_memory_allocated) next to the peak resident memory.

Image: examples/truck.jpg at 1024x1024, one click; set_image median of --runs runs, predict / decoder /
SAM heads (prompt encoder + mask decoder + object pointer, the per-object work of a video frame) of
5 x --runs, after one warm-up each.
Video: --clip (default examples/judo, 854x480) played forwards and backwards to --frames frames, linked into
a temporary JPEG folder that both implementations read; objects are clicks on frame 0; frames/s =
1 / median time per propagated frame, excluding frame 0 (the prompted frame). maskml reads and resizes
each frame when it needs it (inside the per-frame time); the official init_state loads and resizes all
frames up front (in its set-up time).
Stream: Sam2Tracker tracks one object (a mask from one click on the first frame) through --stream frames
of the clip, repeated; peak resident memory after every tenth of them. The official predictor would
first load all frames at 1024x1024 float32; that figure is computed, not run.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import types
from pathlib import Path

from _common import (KEEP_FREED_MEMORY_ENV, ROOT, check_device, find_checkout, machine_line, median_ms, peak_rss_mb,
                     run_worker, square_test_image, synchronize)

CLIP = ROOT / "examples" / "judo"
CLICKS = [(465, 260), (370, 280), (660, 160)]  # judo frame 0: right fighter, left fighter, standing man
IMAGE_CLICK = [[512.0, 400.0]]
PRESENT_BIAS = "sam_mask_decoder.pred_obj_score_head.layers.2.bias"
FEATURE_SIZES = [(256, 256), (128, 128), (64, 64)]  # Hiera stride 4, 8, 16 at 1024


# ----------------------------------------------------------------------------------------- set-up
def with_parity_weights(model):
    """Fill a model (maskml's or the official one: the same keys and shapes) with the parity fixtures' weights,
    the object-score head's last bias raised so that every object counts as present (else these weights
    judge the objects absent and both implementations output the constant "no object" logits)."""
    import torch

    sys.path.insert(0, str(ROOT / "tests"))
    from weights import fill_state_dict

    state = fill_state_dict({k: list(v.shape) for k, v in model.state_dict().items()})
    state[PRESENT_BIAS] = torch.full_like(state[PRESENT_BIAS], 10.0)
    model.load_state_dict(state)
    return model.eval()


def maskml_sam2(name: str, compiled: bool = False, device: str = "cpu"):
    import torch

    import maskml

    # built outside inference mode even when called inside it: compiled code cannot take parameters that
    # are inference tensors (they have no version counter)
    with torch.inference_mode(False):
        model = with_parity_weights(maskml.build_model(name)).to(device)
    if compiled:
        model.image_encoder.compile()
    return model


def official_sam2(name: str, src: str, video: bool, device: str = "cpu"):
    root = find_checkout(src, ("facebookresearch+sam2", "sam2"), "sam2")
    sys.path.insert(0, str(root))
    try:
        import iopath  # noqa: F401
    except ImportError:  # hieradet imports it only to read weights_path files, which the configs leave unset
        file_io = types.ModuleType("iopath.common.file_io")
        file_io.g_pathmgr = None
        sys.modules.update({"iopath": types.ModuleType("iopath"), "iopath.common": types.ModuleType("iopath.common"),
                            "iopath.common.file_io": file_io})
    from sam2.build_sam import build_sam2, build_sam2_video_predictor

    config = f"configs/{'sam2.1' if name.startswith('sam2.1') else 'sam2'}/{name}.yaml"
    return with_parity_weights((build_sam2_video_predictor if video else build_sam2)(config, device=device))


def clip_cycle(clip: Path) -> list[Path]:
    """The clip's JPEG frames forwards, then backwards without repeating the ends: repeat it for a long video."""
    files = sorted(p for p in clip.iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))
    if not files:
        raise SystemExit(f"no JPEG frames in {clip}")
    return files + files[-2:0:-1]


def clip_folder(clip: Path, frames: int, dest: Path) -> Path:
    """`frames` frames of the clip cycle, as links named 00000.jpg, ... (the official loader wants that)."""
    cycle = clip_cycle(clip)
    dest.mkdir(parents=True)
    for i in range(frames):
        (dest / f"{i:05d}.jpg").symlink_to(cycle[i % len(cycle)].resolve())
    return dest


def timed_steps(steps, keep, device: str = "cpu"):
    """Seconds spent producing each item of the generator `steps` (its GPU work included); keep(item) is
    called outside the timing."""
    times, it = [], iter(steps)
    while True:
        start = time.perf_counter()
        item = next(it, None)
        synchronize(device)
        if item is None:
            return times
        times.append(time.perf_counter() - start)
        keep(item)


def peak_memory(result: dict, device: str) -> dict:
    """Peak resident memory, and on a GPU the peak GPU memory allocated, added to a worker's result."""
    import torch

    result["peak_rss_mb"] = peak_rss_mb()
    if device.startswith("cuda"):
        result["peak_gpu_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return result


# ----------------------------------------------------------------------------------------- workers
def image_worker(name: str, impl: str, runs: int, src: str | None, out: Path, device: str) -> dict:
    import numpy as np
    import torch
    import torch.nn.functional as F

    image = square_test_image()
    point, label = np.array(IMAGE_CLICK), np.array([1])
    result = {"model": name, "impl": impl}
    with torch.inference_mode():
        if impl.startswith("maskml"):
            import maskml

            model = maskml_sam2(name, compiled=impl == "maskml+compile", device=device)
            predictor = maskml.ImagePredictor(model)
            result["set_image_ms"] = median_ms(lambda: predictor.set_image(image), runs, device)
            result["predict_ms"] = median_ms(lambda: predictor.predict(points=point, labels=label), 5 * runs, device)
            state = predictor._state
            coords = predictor.backend.to_input_frame(torch.from_numpy(point), state).float()[None].to(device)
            labels = torch.ones(1, 1, dtype=torch.int32, device=device)
            decode = lambda: predictor.backend.decode(state, (coords, labels), None, None, False)  # noqa: E731
            heads = lambda: model.predict_masks(state["embedding"], state["high_res"], coords, labels)  # noqa: E731
            result["decoder_ms"] = median_ms(decode, 5 * runs, device)
            result["heads_ms"] = median_ms(heads, 5 * runs, device)
            peak_memory(result, device)
            h = heads()
            outputs = {"embedding": state["embedding"], "high_res_s4": state["high_res"][0],
                       "high_res_s8": state["high_res"][1], "logits": predictor.predict(points=point, labels=label).logits,
                       "heads_logits": h.logits, "obj_ptr": h.obj_ptr}
        else:
            official = official_sam2(name, src, video=False, device=device)
            size = official.image_size

            def set_image():  # SAM2ImagePredictor.set_image, step by step
                x = torch.from_numpy(image).to(device).permute(2, 0, 1).float() / 255.0
                if x.shape[-2:] != (size, size):  # torchvision's Resize returns an image of the size as it is
                    x = F.interpolate(x[None], (size, size), mode="bilinear", align_corners=False, antialias=True)[0]
                x = (x - x.new_tensor([0.485, 0.456, 0.406])[:, None, None]) / x.new_tensor([0.229, 0.224, 0.225])[
                    :, None, None]
                _, feats, _, _ = official._prepare_backbone_features(official.forward_image(x[None]))
                feats[-1] = feats[-1] + official.no_mem_embed
                maps = [f.permute(1, 2, 0).view(1, -1, *s) for f, s in zip(feats, FEATURE_SIZES)]
                return maps[-1], maps[:-1]

            result["set_image_ms"] = median_ms(set_image, runs, device)
            embed, high_res = set_image()
            h, w = image.shape[:2]
            labels = torch.ones(1, 1, dtype=torch.int32, device=device)

            def decode(c):
                sparse, dense = official.sam_prompt_encoder(points=(c, labels), boxes=None, masks=None)
                return official.sam_mask_decoder(
                    image_embeddings=embed, image_pe=official.sam_prompt_encoder.get_dense_pe(),
                    sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=False,
                    repeat_image=False, high_res_features=high_res)

            def predict():  # SAM2ImagePredictor.predict: pixel click -> logits at the image size
                c = (torch.as_tensor(point, dtype=torch.float32) / torch.tensor([w, h]) * size).to(device)
                low_res = decode(c[None])[0]
                logits = F.interpolate(low_res, (h, w), mode="bilinear", align_corners=False)
                return logits, logits > 0, low_res.clamp(-32.0, 32.0)

            coords = (torch.as_tensor(point, dtype=torch.float32)[None] / torch.tensor([w, h]) * size).to(device)
            point_inputs = {"point_coords": coords, "point_labels": labels}
            heads = lambda: official._forward_sam_heads(embed, point_inputs, None, high_res, False)  # noqa: E731
            result["predict_ms"] = median_ms(predict, 5 * runs, device)
            result["decoder_ms"] = median_ms(lambda: decode(coords), 5 * runs, device)
            result["heads_ms"] = median_ms(heads, 5 * runs, device)
            peak_memory(result, device)
            hd = heads()
            outputs = {"embedding": embed, "high_res_s4": high_res[0], "high_res_s8": high_res[1],
                       "logits": predict()[0][0], "heads_logits": hd[3], "obj_ptr": hd[5]}
    torch.save({k: v.cpu().clone() for k, v in outputs.items()}, out / f"image_{name}_{impl}.pt")
    return result


def video_worker(name: str, impl: str, objects: int, src: str | None, frames: Path, out: Path, device: str) -> dict:
    import numpy as np
    import torch

    dest = out / f"video_{name}_{objects}_{impl}"
    dest.mkdir(exist_ok=True)  # a repeated run overwrites the same outputs
    save = lambda i, logits: np.save(dest / f"{i:05d}.npy", logits.float().cpu().numpy())  # noqa: E731
    with torch.inference_mode():
        if impl.startswith("maskml"):
            from maskml.predict.sam2 import VideoSession

            model = maskml_sam2(name, compiled=impl == "maskml+compile", device=device)
            start = time.perf_counter()
            session = VideoSession(model, frames)
            for i, (x, y) in enumerate(CLICKS[:objects]):
                session.add_points(0, i + 1, points=[[x, y]], labels=[1])
            synchronize(device)
            setup = time.perf_counter() - start
            times = timed_steps(session.propagate(), lambda s: save(s.frame_idx, s.logits), device)
        else:
            predictor = official_sam2(name, src, video=True, device=device)
            start = time.perf_counter()
            state = predictor.init_state(str(frames))
            for i, (x, y) in enumerate(CLICKS[:objects]):
                predictor.add_new_points_or_box(state, frame_idx=0, obj_id=i + 1, points=np.array([[x, y]], np.float32),
                                                labels=np.array([1], np.int32))
            synchronize(device)
            setup = time.perf_counter() - start
            times = timed_steps(predictor.propagate_in_video(state), lambda s: save(s[0], s[2][:, 0]), device)
    return peak_memory({"model": name, "impl": impl, "objects": objects, "setup_s": setup, "frame_s": times,
                        "fps": 1 / statistics.median(times[1:]) if len(times) > 1 else float("nan")}, device)


def stream_worker(name: str, frames: int, clip: Path, device: str) -> dict:
    import numpy as np
    import torch
    from PIL import Image

    import maskml
    from maskml.predict.sam2 import Sam2Tracker

    images = [np.array(Image.open(p).convert("RGB")) for p in clip_cycle(clip)]
    model = maskml_sam2(name, device=device)
    with torch.inference_mode():
        predictor = maskml.ImagePredictor(model)
        predictor.set_image(images[0])
        mask = predictor.predict(points=[CLICKS[0]], labels=[1]).masks[0].to(torch.uint8)
        del predictor
        tracker = Sam2Tracker(model)
        every = max(frames // 10, 1)
        rss, times = [], []
        for i in range(frames):
            start = time.perf_counter()
            tracker.step(images[i % len(images)], mask=mask if i == 0 else None)
            synchronize(device)
            times.append(time.perf_counter() - start)
            if (i + 1) % every == 0:
                rss.append(round(peak_rss_mb()))
    h, w = images[0].shape[:2]
    return {"model": name, "frames": frames, "every": every, "rss": rss, "size": [h, w],
            "fps": 1 / statistics.median(times[1:]) if frames > 1 else float("nan")}


# ----------------------------------------------------------------------------------------- report
def max_abs(a, b) -> float:
    return float((a.float() - b.float()).abs().max())


def gpu_memory(rows: list[dict]) -> tuple[str, str]:
    """The peak GPU memory column's header and its cell format, when the rows ran on a GPU."""
    return (" peak GPU memory (MB) |", "{peak_gpu_mb:.0f} | ") if "peak_gpu_mb" in rows[0] else ("", "")


def image_report(rows: list[dict], out: Path) -> None:
    import torch

    gpu_header, gpu_cell = gpu_memory(rows)
    print("\n| model | implementation | set_image (ms) | predict (ms) | decoder (ms) | SAM heads (ms) | peak RSS (MB) |"
          f"{gpu_header} encoder speed-up | predict speed-up |")
    print("|---|---|---|---|---|---|---|" + "---|" * (bool(gpu_header) + 2))
    for r in rows:
        ref = next((o for o in rows if o["impl"] == "official" and o["model"] == r["model"]), None)
        ours = ref and r["impl"].startswith("maskml")
        enc = f"{ref['set_image_ms'] / r['set_image_ms']:.2f}x" if ours else ""
        pred = f"{ref['predict_ms'] / r['predict_ms']:.2f}x" if ours else ""
        print(f"| {r['model']} | {r['impl']} | {r['set_image_ms']:.0f} | {r['predict_ms']:.1f} | {r['decoder_ms']:.1f} "
              f"| {r['heads_ms']:.1f} | {r['peak_rss_mb']:.0f} | {gpu_cell.format(**r)}{enc} | {pred} |")
    for name, impl in dict.fromkeys((r["model"], r["impl"]) for r in rows if r["impl"].startswith("maskml")):
        ours, theirs = out / f"image_{name}_{impl}.pt", out / f"image_{name}_official.pt"
        if ours.exists() and theirs.exists():
            a, b = torch.load(ours), torch.load(theirs)
            print(f"{name}: {impl} vs official, same weights, max |diff|: " + ", ".join(
                f"{k} {max_abs(a[k], b[k]):.1e}" for k in a))


def video_report(rows: list[dict], out: Path) -> None:
    import numpy as np

    gpu_header, gpu_cell = gpu_memory(rows)
    print(f"\n| model | objects | implementation | frames/s | per frame (ms) | set-up (s) | peak RSS (MB) |{gpu_header} "
          "speed-up |")
    print("|---|---|---|---|---|---|---|" + "---|" * (bool(gpu_header) + 1))
    for r in rows:
        ref = next((o for o in rows if o["impl"] == "official" and o["model"] == r["model"]
                    and o["objects"] == r["objects"]), None)
        speedup = f"{r['fps'] / ref['fps']:.2f}x" if ref and r["impl"].startswith("maskml") else ""
        print(f"| {r['model']} | {r['objects']} | {r['impl']} | {r['fps']:.2f} | {1000 / r['fps']:.0f} "
              f"| {r['setup_s']:.1f} | {r['peak_rss_mb']:.0f} | {gpu_cell.format(**r)}{speedup} |")
    for r in rows:
        if not r["impl"].startswith("maskml"):
            continue
        ours = out / f"video_{r['model']}_{r['objects']}_{r['impl']}"
        theirs = out / f"video_{r['model']}_{r['objects']}_official"
        common = sorted({p.name for p in ours.glob("*.npy")} & {p.name for p in theirs.glob("*.npy")})
        if not common:
            continue
        diff, flipped, pixels = 0.0, 0, 0
        for f in common:
            a, b = np.load(ours / f), np.load(theirs / f)
            diff = max(diff, float(np.abs(a - b).max()))
            flipped += int(((a > 0) != (b > 0)).sum())
            pixels += a.size
        objects = f"{r['objects']} object" + ("s" if r["objects"] > 1 else "")
        print(f"{r['model']} ({r['impl']}), {objects}, {len(common)} frames both produced: logits max |diff| "
              f"{diff:.1e}, mask pixels that differ {flipped} of {pixels}")


def stream_report(r: dict) -> None:
    h, w = r["size"]
    n = r["frames"]
    frames_mb = n * 3 * 1024 * 1024 * 4 / 2**20
    kept_mb = n * (64 * 64 * 64 * 2 + 256 * 256 * 4 + 256 * 4) / 2**20  # memory, low-res mask, pointer
    print(f"\n{r['model']}, Sam2Tracker, 1 object, {n} frames of {w}x{h} ({r['fps']:.2f} frames/s): peak resident "
          f"memory (MB) after every {r['every']} frames: {r['rss']}")
    print(f"The official SAM2VideoPredictor.init_state would first hold all {n} frames at 3x1024x1024 float32: "
          f"{frames_mb:,.0f} MB, and it keeps every frame's outputs (memory features in bfloat16, low-res mask, "
          f"pointer: {kept_mb:.0f} MB more for 1 object).")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["sam2.1_hiera_t"])
    parser.add_argument("--parts", nargs="*", choices=["image", "video"], default=["image", "video"])
    parser.add_argument("--runs", type=int, default=5, help="set_image runs (predict / decoder / heads: 5x)")
    parser.add_argument("--objects", nargs="+", type=int, default=[1, 3], choices=range(1, len(CLICKS) + 1))
    parser.add_argument("--frames", type=int, default=8, help="video frames per propagation run")
    parser.add_argument("--clip", type=Path, default=CLIP, help="folder of JPEG frames (default examples/judo)")
    parser.add_argument("--stream", type=int, default=0, help="also track one object through this many frames "
                                                              "with Sam2Tracker, reporting resident memory")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=1, help="run every video configuration this many times, "
                                                              "interleaved, and keep the fastest (shared machines)")
    parser.add_argument("--official-src", help="checkout of facebookresearch/sam2, to time it side by side")
    parser.add_argument("--compile", action="store_true",
                        help="also run maskml with its image encoder compiled (torch.compile)")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N: where both implementations run")
    parser.add_argument("--official-malloc", action="store_true",
                        help="image part: also run the official code with maskml's allocator setting")
    parser.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        import torch

        torch.set_num_threads(args.threads)
        kind, name, impl, objects = args.worker
        if kind == "image":
            result = image_worker(name, impl, args.runs, args.official_src, args.out, args.device)
        elif kind == "video":
            result = video_worker(name, impl, int(objects), args.official_src, args.out / "frames", args.out,
                                  args.device)
        else:
            result = stream_worker(name, args.stream, args.clip, args.device)
        print(json.dumps(result))
        return

    check_device(args.device)
    print(machine_line(args.threads, args.device))
    official = ["official"] if args.official_src else []
    ours = ["maskml"] + (["maskml+compile"] if args.compile else [])
    with tempfile.TemporaryDirectory(prefix="bench_sam2_") as tmp:
        out = Path(tmp)

        def worker(kind: str, name: str, impl: str, objects: int = 0, env: dict | None = None) -> dict:
            cmd = [sys.executable, __file__, "--worker", kind, name, impl, str(objects), "--out", tmp, "--runs",
                   str(args.runs), "--threads", str(args.threads), "--stream", str(args.stream), "--clip", str(args.clip),
                   "--device", args.device]
            cmd += ["--official-src", args.official_src] if args.official_src else []
            return run_worker(cmd, f"{kind} {name}/{impl}" + (f"/{objects} objects" if objects else ""),
                              dict(os.environ, **(env or {})))

        if "image" in args.parts:
            print(f"Image: 1024x1024, one click; set_image median of {args.runs} runs, predict / decoder / heads "
                  f"median of {5 * args.runs}")
            rows = []
            for name in args.models:
                for impl in ours:
                    rows.append(worker("image", name, impl))
                for impl in official + (["official+malloc"] if official and args.official_malloc else []):
                    rows.append(worker("image", name, impl, env=KEEP_FREED_MEMORY_ENV if "malloc" in impl else None))
            image_report(rows, out)
        if "video" in args.parts:
            clip_folder(args.clip, args.frames, out / "frames")
            clip = args.clip.resolve()
            clip = clip.relative_to(ROOT) if clip.is_relative_to(ROOT) else clip
            print(f"\nVideo: {args.frames} frames of {clip} (forwards and backwards), clicks on frame 0; frames/s = "
                  f"1 / median time of frames 1..{args.frames - 1}" + (f", fastest of {args.repeat} interleaved runs"
                                                                       if args.repeat > 1 else ""))
            best = {}
            for _ in range(args.repeat):
                for name in args.models:
                    for objects in args.objects:
                        for impl in ours + official:
                            row = worker("video", name, impl, objects)
                            key = (name, objects, impl)
                            if key not in best or row["fps"] > best[key]["fps"]:
                                best[key] = row
            video_report(list(best.values()), out)
        if args.stream:
            stream_report(worker("stream", args.models[0], "maskml"))


if __name__ == "__main__":
    main()
