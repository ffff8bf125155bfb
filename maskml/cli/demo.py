"""`maskml demo`: an OpenCV window to click on objects of a video or a live camera and watch them tracked."""
from __future__ import annotations

import argparse

from maskml.errors import MaskmlError

from maskml.cli.backend import PIPELINE_BACKEND_HELP, add_backend_arguments, backend_options
from maskml.cli.track import (add_prompter_arguments, add_source_arguments, load_prompter, load_tracker, parse_options,
                              source_inputs, tracker_family)
from maskml.demo.window import opencv_swap_commands

EPILOG = """examples:
  maskml demo video.mp4 --model cutie_small --prompter mobile_sam
  maskml demo --camera 0 --model cutie_small --prompter mobile_sam --save-dir my_masks/
  maskml demo video.mp4 --model sam2.1_hiera_t          (SAM 2 takes the clicks itself)
  maskml demo video.mp4 --checkpoint cutie_onnx/ --prompter mobile_sam --prompter-checkpoint mobile_sam_onnx/ \
      --backend onnxruntime          (tracker and prompter on ONNX Runtime: folders written by `maskml export`)

in the window: left click = a point on the object, right click = a background point, drag = a box,
n = next object, 1-9 = back to object 1-9, space = play / pause tracking, r = clear the current object, s = save the masks of
the shown frame (an indexed PNG in --save-dir), q = quit. Clicks on any frame add objects or correct
tracked ones from that frame on.

The window needs a display and OpenCV's desktop build in place of the headless one (never both:
they share the cv2 folder, and uninstalling either removes it for both):
  {swap}
and back:
  {back}
Without a window, `maskml segment` and `maskml track` take clicks and boxes as --point and --box.
"""


def register(subparsers) -> None:
    swap, back = opencv_swap_commands()
    p = subparsers.add_parser("demo", help="interactive window: click on objects and watch them tracked",
                              description="Click on objects in a video or a live camera and watch them tracked.",
                              epilog=EPILOG.format(swap=swap, back=back), formatter_class=argparse.RawDescriptionHelpFormatter)
    add_source_arguments(p)
    add_prompter_arguments(p)
    p.add_argument("--save-dir", default="demo_masks", help="folder for the masks saved with s (default demo_masks)")
    add_backend_arguments(p, PIPELINE_BACKEND_HELP)
    p.set_defaults(func=run)


def load_pipeline(args, options: dict):
    """The tracker and the --prompter, both on --backend (as in `maskml track`)."""
    import maskml

    return maskml.Pipeline(load_tracker(args, options, backend_options(args)), load_prompter(args))


def run(args) -> None:
    from maskml.demo.session import DemoSession
    from maskml.demo.window import check_display, run_window
    from maskml.io.outputs import check_outputs
    from maskml.io.stream import open_source

    check_outputs(source_inputs(args), folders={"--save-dir": args.save_dir})
    options = parse_options(args.option)
    if tracker_family(args.model) == "cutie" and not args.prompter:
        raise MaskmlError(f"{args.model} needs --prompter NAME (e.g. mobile_sam) to turn clicks into masks")
    backend_options(args)  # a wrong --providers fails before the window question
    check_display()
    source = open_source(args.video, args.camera)
    try:
        pipeline = load_pipeline(args, options)
        title = args.video if args.camera is None else f"camera {args.camera}"
        run_window(DemoSession(pipeline, source, save_dir=args.save_dir), title)
    finally:
        if hasattr(source, "close"):
            source.close()
