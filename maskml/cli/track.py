"""`maskml track`: objects given as masks, clicks or boxes on some frames, tracked through a video or a live stream."""
from __future__ import annotations

import argparse
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from tqdm import tqdm

from maskml.cli.backend import PIPELINE_BACKEND_HELP, add_backend_arguments, backend_options
from maskml.errors import MaskmlError
from maskml.predict.checks import DEFAULT_MAX_OBJECTS

EPILOG = """examples:
  maskml track video.mp4 --model cutie_small --mask-dir first_masks/ --out masks/ --overlay tracked.mp4
  maskml track video.mp4 --prompter mobile_sam --point 1:0:320,200 --point 1:0:330,90,0 \\
      --box 2:40:500,100,640,360 --out masks/ --coco masks.json
  maskml track --camera 0 --prompter mobile_sam --point 1:0:320,240 --out masks/ --overlay live.mp4
  maskml track frames/ --model cutie_base --mask-dir annotations/ --out masks/ --probs probs/ \\
      --option mem_every=3 --option use_long_term=true --option long_term.max_mem_frames=4
  maskml track frames/ --model sam2.1_hiera_t --point 1:0:210,350 --box 2:30:300,0,500,400 --out masks/
  maskml export cutie_small --out cutie_onnx && maskml export mobile_sam --out mobile_sam_onnx
  maskml track video.mp4 --model cutie_small --checkpoint cutie_onnx --prompter mobile_sam \\
      --prompter-checkpoint mobile_sam_onnx --point 1:0:320,200 --out masks/ --backend onnxruntime

--backend onnxruntime runs the tracker (and the --prompter) on ONNX Runtime: --checkpoint is then the
folder `maskml export MODEL --out FOLDER` wrote, and --prompter-checkpoint the prompter's; without
--backend both are PyTorch checkpoint files (default: the official ones). --providers picks ONNX
Runtime's execution providers (default CPUExecutionProvider).

Each PNG in --mask-dir is named after the frame it belongs to: the frame's file stem for a frame
folder (00005.png for 00005.jpg), the zero-based frame index written with five digits for a video
file (00000.png is the first frame). It adds the objects it contains (palette index = object id;
a plain 0/255 mask is object 1) from that frame on.

--point OBJ:FRAME:X,Y[,LABEL] and --box OBJ:FRAME:X0,Y0,X1,Y1 give object OBJ (1 to 255) on frame
FRAME (zero-based index) in pixels of the frame; LABEL 1 = object (default), 0 = background. The
--prompter's mask for all points and the box of one OBJ:FRAME becomes that object there: a new
object, or a correction of a tracked one. Several objects and frames combine, and combine with
--mask-dir (an object is given one way per frame).

A SAM 2 --model (sam2.1_hiera_t, ...) takes the clicks and boxes itself (with --prompter, it gets
the prompter's masks instead). On a video
file or folder it tracks as the official video predictor: --direction both (the default) runs
forward from the earliest prompted frame, then backward from the latest one, so frames before the
first prompt are filled too; a frame computed twice keeps its later result; frames no pass reaches
are written empty. Its --option names: keep_window, add_all_frames_to_correct_as_cond, cached_frames.

Each frame's results are written as soon as it is done (whole: under a temporary name, then
renamed) into --out and --probs, which may hold other files: maskml replaces only files named
after frames of this video, and deletes nothing. Ctrl-C keeps the frames done and finishes the
--overlay with them, so it plays; --atomic gives all or nothing instead. The overlay is written
in a format browsers play where OpenCV can encode one: .mp4 as H.264, else VP9 (slow to encode:
a few frames/s at 854x480), .webm as VP8 (several times faster); the last line names the codec.

A VIDEO that is no file or folder here but a URL (rtsp://, http://...) is read as a live stream,
as --camera is: frames that come while the model is busy are dropped (the count is shown), FRAME
counts the frames tracked, and Ctrl-C ends the stream keeping the results so far.
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
    p = subparsers.add_parser("track", help="track objects given as masks, clicks or boxes through a video",
                              description="Track objects through a video file, a folder of frames or a live stream.",
                              epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_source_arguments(p)
    p.add_argument("--mask-dir", help="folder of indexed PNG masks named after their frames")
    add_prompter_arguments(p)
    add_backend_arguments(p, PIPELINE_BACKEND_HELP)
    p.add_argument("--point", action="append", default=[], metavar="OBJ:FRAME:X,Y[,LABEL]",
                   help="a click on object OBJ in frame FRAME; LABEL 1 = object (default), 0 = background. Repeatable")
    p.add_argument("--box", action="append", default=[], metavar="OBJ:FRAME:X0,Y0,X1,Y1",
                   help="a box around object OBJ in frame FRAME. Repeatable")
    p.add_argument("--direction", choices=("forward", "backward", "both"), default=None,
                   help="SAM 2 on a video file or folder: track forward from the earliest prompted frame, backward "
                        "from the latest, or both (default)")
    p.add_argument("--out", required=True, help="output folder: one indexed PNG per frame")
    p.add_argument("--probs", help="output folder: per frame float16 .npy (objects, H, W) of probabilities")
    p.add_argument("--overlay", help="output video with the masks drawn over the frames: .mp4 (H.264, or VP9 "
                                     "where OpenCV has no H.264 encoder) or .webm (VP8, faster to encode)")
    p.add_argument("--coco", metavar="FILE.json",
                   help="output COCO annotations: one image per frame, one annotation (compressed RLE) per object "
                        "and frame, the objects as categories")
    p.add_argument("--atomic", action="store_true",
                   help="all or nothing: the results move into --out/--probs only when every frame is done (by "
                        "default each frame's files appear as it is done, so an interrupted run keeps them)")
    p.set_defaults(func=run)


def add_source_arguments(p) -> None:
    """VIDEO or --camera, the tracker model and its options (shared with `maskml demo`)."""
    p.add_argument("video", nargs="?", help="video file (mp4, avi, mov, mkv), folder of frames (jpg, png), "
                                            "or a stream URL OpenCV can read")
    p.add_argument("--camera", type=int, metavar="N", help="track the live camera N (0 = the first) instead")
    p.add_argument("--model", default="cutie_small", help="tracker model (default: cutie_small)")
    p.add_argument("--checkpoint", help="checkpoint file (default: the official file from the cache)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="engine option by its official name, e.g. mem_every=3 (repeatable)")
    p.add_argument("--max-objects", type=int, default=DEFAULT_MAX_OBJECTS, metavar="N",
                   help=f"track at most N objects (default {DEFAULT_MAX_OBJECTS}): each one takes memory, and a mask "
                        f"with hundreds of ids is more often a wrong file than a wish")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")


def tracker_family(name: str, flag: str = "--model", image_flag: str = "--prompter") -> str:
    """"cutie" or "sam2" for a tracker model name given as `flag`; an image-only model is a MaskmlError that
    says it belongs in `image_flag`."""
    from maskml.zoo import get_entry

    family = get_entry(name).family
    if family not in ("cutie", "sam2"):
        raise MaskmlError(f"{flag} {name} is an image model, not a tracker: give it as {image_flag}, and a tracker "
                          f"(cutie_small, cutie_base, sam2.1_hiera_t, ...) as {flag}")
    return family


def load_tracker(args, options: dict, backend: dict | None = None):
    """The --model tracker: VideoTracker (Cutie) or Sam2Tracker, with its --option values; backend: load_model's
    backend options (cli.backend.backend_options), PyTorch when None."""
    import maskml
    from maskml.predict.pipeline import tracker_for

    check_tracker_options(args.model, options)  # a wrong --option fails before the model loads
    model = maskml.load_model(args.model, checkpoint=args.checkpoint, device=args.device, **(backend or {}))
    return tracker_for(model, max_objects=args.max_objects, **options)


def check_tracker_options(name: str, options: dict) -> None:
    """MaskmlError for a tracker model name that is not one, or an option its engine does not have."""
    from maskml.predict.cutie.tracker import resolve_options as cutie_options
    from maskml.predict.sam2.session import resolve_options as sam2_options

    (cutie_options if tracker_family(name) == "cutie" else sam2_options)(options)


def load_prompter(args):
    """The --prompter image model, on the same backend as the tracker, or None."""
    import maskml

    if not args.prompter:
        return None
    return maskml.load_model(args.prompter, checkpoint=args.prompter_checkpoint, device=args.device,
                             **backend_options(args))


def add_prompter_arguments(p, required: bool = False) -> None:
    p.add_argument("--prompter", required=required,
                   help="image model that turns clicks and boxes into masks (mobile_sam, sam_vit_b, ...)")
    p.add_argument("--prompter-checkpoint", help="the prompter's checkpoint file (default: the official file)")


def check_object_limit(count: int, what: str, args, frame_size: tuple[int, int]) -> None:
    """More than --max-objects objects is an error that says what they would cost."""
    from maskml.predict.checks import check_object_count

    if args.max_objects < 1:
        raise MaskmlError(f"--max-objects {args.max_objects}: give a positive number of objects")
    check_object_count(count, args.max_objects, what, f"give --max-objects {count}", args.model, frame_size)


def load_prompt_masks(mask_dir: Path, source, frame_size: tuple[int, int], args) -> dict[int, np.ndarray]:
    """{frame index: H x W object ids} from --mask-dir, checked against the video's frames and --max-objects."""
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
        present = np.unique(ids[ids > 0])
        what = f"mask {path} holds {len(present)} object ids ({present[0]} to {present[-1]})"
        check_object_limit(len(present), what, args, frame_size)
        masks[index_of[path.stem]] = ids
    return masks


PROMPT_FORMS = {"--point": "OBJ:FRAME:X,Y or OBJ:FRAME:X,Y,LABEL", "--box": "OBJ:FRAME:X0,Y0,X1,Y1"}


def parse_prompts(points: list[str], boxes: list[str], size: tuple[int, int], frame_count: int | None,
                  mask_objects: dict[int, set[int]] | None = None) -> dict:
    """--point and --box values -> {frame index: [Prompt, one per object]}: all points and the box of
    one OBJ:FRAME form one prompt. Checked: OBJ from 1 to 255, FRAME a frame of the video (any
    FRAME >= 0 for a live source, frame_count None), points and box inside the (H, W) frame, at most
    one box per object and frame, and no object given on a frame where --mask-dir already gives it
    (mask_objects: {frame index: object ids of its mask})."""
    from maskml.cli.segment import parse_numbers
    from maskml.predict.pipeline import Prompt

    mask_objects = mask_objects or {}
    gathered: dict[tuple[int, int], dict] = {}
    for option, texts in (("--point", points), ("--box", boxes)):
        for text in texts:
            parts = text.split(":")
            if len(parts) != 3:
                raise MaskmlError(f"{option} {text!r} is not of the form {PROMPT_FORMS[option]}")
            try:
                obj, frame = int(parts[0]), int(parts[1])
                values = parse_numbers(parts[2], option, (2, 3) if option == "--point" else (4,))
            except (ValueError, MaskmlError):
                raise MaskmlError(f"{option} {text!r} is not of the form {PROMPT_FORMS[option]} "
                                  f"(integers OBJ and FRAME, then numbers in pixels)") from None
            if not 1 <= obj <= 255:
                raise MaskmlError(f"{option} {text!r}: OBJ is an object id from 1 to 255, got {obj}")
            if frame < 0 or frame_count is not None and frame >= frame_count:
                frames = f"0 to {frame_count - 1}" if frame_count is not None else "0, 1, ..."
                raise MaskmlError(f"{option} {text!r}: there is no frame {frame} (frames are numbered {frames})")
            if obj in mask_objects.get(frame, ()):
                raise MaskmlError(f"{option} {text!r}: object {obj} on frame {frame} is already given by the "
                                  f"--mask-dir mask of that frame: use another OBJ for another object")
            entry = gathered.setdefault((frame, obj), {"points": [], "labels": [], "box": None})
            if option == "--point":
                label = values[2] if len(values) == 3 else 1
                if label not in (0, 1):
                    raise MaskmlError(f"--point {text!r}: LABEL must be 1 (object) or 0 (background)")
                try:
                    Prompt(obj, points=[values[:2]]).check_inside(size)
                except MaskmlError as exc:
                    raise MaskmlError(f"--point {text!r}: {exc}") from None
                entry["points"].append(values[:2])
                entry["labels"].append(int(label))
            else:
                if entry["box"] is not None:
                    raise MaskmlError(f"--box {text!r}: object {obj} already has a box on frame {frame} "
                                      f"(one box per object and frame; add --point clicks to refine it)")
                try:
                    Prompt(obj, box=values).check_inside(size)
                except MaskmlError as exc:
                    raise MaskmlError(f"--box {text!r}: {exc}") from None
                entry["box"] = values
    prompts: dict[int, list] = {}
    for (frame, obj), entry in sorted(gathered.items()):
        prompts.setdefault(frame, []).append(Prompt(obj, **entry))
    return prompts


def gather_objects(args, source) -> tuple[dict, dict, set[int]]:
    """The objects of --mask-dir, --point and --box, checked against the opened source:
    ({frame index: H x W ids}, {frame index: [Prompt]}, every object id)."""
    from maskml.io.stream import LiveStream

    live = isinstance(source, LiveStream)
    if args.mask_dir and live:
        raise MaskmlError("--mask-dir needs a video file or a frame folder (a live stream's frames are not "
                          "known in advance): give the objects with --point/--box")
    masks = load_prompt_masks(Path(args.mask_dir), source, source.size, args) if args.mask_dir else {}
    mask_objects = {i: {int(v) for v in np.unique(ids) if v != 0} for i, ids in masks.items()}
    prompts = parse_prompts(args.point, args.box, source.size, None if live else len(source), mask_objects)
    all_ids = set().union(*mask_objects.values(), *({p.object_id for p in ps} for ps in prompts.values()))
    check_object_limit(len(all_ids), f"the masks and prompts give {len(all_ids)} objects", args, source.size)
    return masks, prompts, all_ids


def source_inputs(args) -> dict:
    """What a tracking command reads, by flag, for check_outputs (shared with `maskml demo`)."""
    return {"VIDEO": args.video, "--checkpoint": args.checkpoint, "--prompter-checkpoint": args.prompter_checkpoint}


def describe_frames(written: dict[int, str]) -> str:
    """{index: name} -> "frames 00000..00036", or "37 frames from 00003 to 00050" when some are missing."""
    indices = sorted(written)
    first, last = written[indices[0]], written[indices[-1]]
    if len(indices) == 1:
        return f"frame {first}"
    if indices[-1] - indices[0] + 1 == len(indices):
        return f"frames {first}..{last}"
    return f"{len(indices)} frames from {first} to {last}"


def stopped_report(args, results, total: int | None) -> str:
    """How far a run that stopped early got, what it kept and how to go on."""
    done = f"after {len(results.written)}{f' of {total}' if total is not None else ''} frames"
    if args.atomic:
        return f"{done}; with --atomic nothing was kept: run the same command again"
    if not results.written:
        return f"{done}; nothing was written"
    folders = " and ".join(str(p) for p in (args.out, args.probs) if p)
    overlay = f", and {args.overlay} shows them" if results.overlay_kept else ""
    return (f"{done}: the results of {describe_frames(results.written)} are in {folders}{overlay}; run the same "
            f"command again to track the whole video (it replaces those files)")


@contextmanager
def result_writer(args, source, all_ids: set[int], total: int | None):
    """ResultWriter for the command's outputs; a run stopped by Ctrl-C or an error says how far it got."""
    from maskml.io.results import ResultWriter

    results = ResultWriter(args.out, args.probs, args.overlay, object_ids=all_ids, size=source.size,
                           fps=source.fps, source=source if total is not None else None, atomic=args.atomic,
                           coco=args.coco)
    try:
        with results:
            yield results
    except KeyboardInterrupt:
        raise KeyboardInterrupt(stopped_report(args, results, total)) from None
    except MaskmlError as exc:
        if not results.written:
            raise
        raise MaskmlError(f"{exc} (stopped {stopped_report(args, results, total)})") from None
    if args.overlay and not results.browser_playable:
        print(f"note: this OpenCV has no H.264 or VP9 encoder for .mp4, so {args.overlay} is {results.codec}, which "
              f"browsers do not play (VLC and ffplay do); try --overlay NAME.webm", file=sys.stderr)


def outputs_line(args, results) -> str:
    """" -> masks/, probs/, overlay tracked.mp4 (VP9)": where the results went."""
    overlay = f", overlay {args.overlay} ({results.codec})" if results.overlay_kept else ""
    return f" -> {', '.join(str(p) for p in (args.out, args.probs, args.coco) if p)}{overlay}"


def run(args) -> None:
    import maskml
    from maskml.io.outputs import check_outputs
    from maskml.io.results import check_coco_suffix, check_overlay_suffix
    from maskml.io.stream import LiveStream, open_source

    check_overlay_suffix(args.overlay)
    check_coco_suffix(args.coco)
    check_outputs({**source_inputs(args), "--mask-dir": args.mask_dir},
                  folders={"--out": args.out, "--probs": args.probs},
                  files={"--overlay": args.overlay, "--coco": args.coco})
    options = parse_options(args.option)
    sam2 = tracker_family(args.model) == "sam2"
    if args.direction and not sam2:
        raise MaskmlError(f"--direction is for SAM 2 models; {args.model} tracks forward, frame by frame")
    if (args.point or args.box) and not args.prompter and not sam2:
        raise MaskmlError("--point/--box need --prompter NAME: the image model that turns them into masks "
                          "(e.g. --prompter mobile_sam), or a SAM 2 --model, which takes them itself")
    if args.prompter_checkpoint and not args.prompter:
        raise MaskmlError("--prompter-checkpoint is given without --prompter")
    if not (args.mask_dir or args.point or args.box):
        raise MaskmlError("nothing to track: give the objects with --mask-dir and/or --point/--box")

    source = open_source(args.video, args.camera)
    live = isinstance(source, LiveStream)
    count = 0
    try:
        masks, prompts, all_ids = gather_objects(args, source)
        if sam2 and not live:
            return track_with_session(args, options, source, masks, prompts, all_ids)
        tracker = load_tracker(args, options, backend_options(args))
        pipeline = maskml.Pipeline(tracker, load_prompter(args))
        with result_writer(args, source, all_ids, None if live else len(source)) as results, \
                tqdm(total=None if live else len(source), unit="frame", desc=f"tracking with {args.model}") as bar:
            try:
                for index, name, frame in source:
                    result = pipeline.step(frame, prompts.pop(index, ()), masks.pop(index, None))
                    results.write(index, name, frame, result)
                    count += 1
                    bar.update(1)
                    if live:
                        bar.set_postfix(dropped=source.dropped, refresh=False)
            except KeyboardInterrupt:
                if not live:
                    raise
                print(f"\n{source.description}: stopped by the user", file=sys.stderr)  # how a live run ends
    finally:
        if live:
            source.close()
    dropped = f", {source.dropped} dropped" if live else ""
    print(f"{count} frames{dropped}, objects {sorted(all_ids)}{outputs_line(args, results)}")
    unreached = sorted(set(prompts) | set(masks))
    if unreached:
        what = source.description if live else f"video {args.video}"
        reason = f" ({source.error})" if live and source.error else ""
        raise MaskmlError(f"{what} ended after {count} frames{reason}, before frames {unreached} that have "
                          f"objects: the results of those {count} frames are in {args.out}")


def track_with_session(args, options: dict, source, masks: dict, prompts: dict, all_ids: set[int]) -> None:
    """SAM 2 on a video file or folder: every prompt added first, then the propagation passes, each
    with its own progress bar."""
    import torch

    import maskml
    from maskml.predict.pipeline import prompt_masks
    from maskml.predict.sam2.session import resolve_options
    from maskml.predict.sam2.tracker import to_tracker_output

    options = resolve_options(options)  # checked before the model loads
    session = maskml.VideoSession(maskml.load_model(args.model, checkpoint=args.checkpoint, device=args.device,
                                                    **backend_options(args)), source, **options)
    if args.prompter:  # the prompter's masks become mask prompts
        predictor = maskml.ImagePredictor(load_prompter(args))
        for frame, frame_prompts in prompts.items():
            predictor.set_image(source.frame(frame))
            ids = prompt_masks(predictor, frame_prompts).cpu().numpy()
            masks[frame] = np.where(ids > 0, ids, masks[frame]) if frame in masks else ids
        prompts = {}
    for frame, frame_prompts in prompts.items():
        for p in frame_prompts:
            session.add_points(frame, p.object_id, p.points or None, p.labels or None, box=p.box)
    for frame, ids in masks.items():
        ids = torch.from_numpy(np.asarray(ids))
        for obj in ids.unique().tolist():
            if obj:
                session.add_mask(frame, obj, ids == obj)
    prompted = sorted(set(prompts) | set(masks))
    direction = args.direction or "both"
    passes = []  # (what the bar says, the pass's steps, its frame count)
    if direction in ("forward", "both"):
        passes.append((f"forward from frame {prompted[0]}", session.propagate(start=prompted[0]),
                       len(source) - prompted[0]))
    if direction in ("backward", "both"):
        passes.append((f"backward from frame {prompted[-1]}", session.propagate(start=prompted[-1], reverse=True),
                       prompted[-1] + 1))
    h, w = source.size
    empty = maskml.TrackerOutput(torch.zeros(0, h, w), [], torch.zeros(h, w, dtype=torch.int64))
    with result_writer(args, source, all_ids, len(source)) as results:
        for number, (what, steps, count) in enumerate(passes, 1):
            with tqdm(total=count, unit="frame", desc=f"{args.model} pass {number}/{len(passes)}, {what}") as bar:
                for step in steps:
                    index = step.frame_idx
                    results.write(index, source.names[index], source.frame(index),
                                  to_tracker_output(step.obj_ids, step.logits))
                    bar.update(1)
        for index in range(len(source)):  # frames no pass reached (before the first prompt, going forward only)
            if index not in results.written:
                results.write(index, source.names[index], source.frame(index), empty)
    print(f"{len(source)} frames, objects {sorted(all_ids)} ({direction}){outputs_line(args, results)}")
