"""`maskml demo`: an OpenCV window to click on objects of a video or a live camera and watch them tracked."""
from __future__ import annotations

import argparse

from maskml.errors import MaskmlError

from maskml.cli.track import (add_prompter_arguments, add_source_arguments, load_tracker, parse_options, source_inputs,
                              tracker_family)
from maskml.demo.window import opencv_swap_commands

EPILOG = """examples:
  maskml demo video.mp4 --model cutie_small --prompter mobile_sam
  maskml demo --camera 0 --model cutie_small --prompter mobile_sam --save-dir my_masks/
  maskml demo video.mp4 --model sam2.1_hiera_t          (SAM 2 takes the clicks itself)

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
    p.set_defaults(func=run)


def run(args) -> None:
    import maskml
    from maskml.demo.session import DemoSession
    from maskml.demo.window import check_display, run_window
    from maskml.io.outputs import check_outputs
    from maskml.io.stream import open_source

    check_outputs(source_inputs(args), folders={"--save-dir": args.save_dir})
    options = parse_options(args.option)
    if tracker_family(args.model) == "cutie" and not args.prompter:
        raise MaskmlError(f"{args.model} needs --prompter NAME (e.g. mobile_sam) to turn clicks into masks")
    check_display()
    source = open_source(args.video, args.camera)
    try:
        tracker = load_tracker(args, options)
        prompter = maskml.load_model(args.prompter, checkpoint=args.prompter_checkpoint,
                                     device=args.device) if args.prompter else None
        title = args.video if args.camera is None else f"camera {args.camera}"
        run_window(DemoSession(maskml.Pipeline(tracker, prompter), source, save_dir=args.save_dir), title)
    finally:
        if hasattr(source, "close"):
            source.close()
