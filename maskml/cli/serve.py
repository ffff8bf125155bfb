"""`maskml serve`: the browser app (click to segment, click to track, correct, export) and its HTTP API."""
from __future__ import annotations

import argparse
import secrets

from maskml.cli.backend import add_backend_arguments, backend_options
from maskml.errors import MaskmlError

EPILOG = """examples:
  maskml serve                                       then open http://127.0.0.1:8000/
  maskml serve --model sam_vit_b --tracker cutie_base --port 8080
  maskml serve --host 0.0.0.0 --max-sessions 4       reachable from other machines: open the printed ?token= address
  maskml serve --backend onnxruntime --checkpoint exported/mobile_sam/ --tracker-checkpoint exported/cutie_small/

In the page: open an image or a video (or drop it on the page); left click = a point on the object,
right click (or shift + click) = a background point, drag = a box; n = a new object, z = undo. Track
carries the objects through the video; once tracked, a click on any frame corrects the object there
and tracking starts again from that frame by itself. Exports are the files `maskml track --out --coco --overlay` writes.

By default the server answers on 127.0.0.1 only. Any other --host needs an access token: one is made
at start (or give --token) and printed in the address to open; every request must carry it (the page
keeps it in a cookie; scripts send 'Authorization: Bearer TOKEN'). The API is described at /docs.
"""


def register(subparsers) -> None:
    p = subparsers.add_parser("serve", help="browser app: click to segment and track, correct, export",
                              description="Serve the maskml web app and its HTTP API.", epilog=EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1, this machine only; "
                                                       "any other needs the token)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 = a free one)")
    p.add_argument("--model", default="mobile_sam", help="image model for the clicks (default mobile_sam)")
    p.add_argument("--checkpoint", help="its checkpoint file (default: the official file from the cache)")
    p.add_argument("--tracker", default="cutie_small",
                   help="video tracker: cutie_small (default) or cutie_base")
    p.add_argument("--tracker-checkpoint", help="its checkpoint file (default: the official file; with --backend "
                                                "onnxruntime, its maskml export folder)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="tracker option by its official name, e.g. mem_every=3 (repeatable)")
    add_backend_arguments(p)
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--token", help="access token to require (default: a new random one for a --host other than "
                                   "127.0.0.1 or localhost, none on those)")
    p.add_argument("--max-upload-mb", type=float, default=500, help="largest upload in MiB (default 500)")
    p.add_argument("--max-frames", type=int, default=2000, help="most frames in a video (default 2000)")
    p.add_argument("--max-sessions", type=int, default=8,
                   help="most sessions (open files) at once, across all browsers (default 8)")
    p.add_argument("--idle-minutes", type=float, default=60,
                   help="a session unused this long is closed and its files deleted (default 60)")
    p.set_defaults(func=run)


def limits_of(args):
    from maskml.serve.sessions import Limits

    for flag, value in (("--max-upload-mb", args.max_upload_mb), ("--max-frames", args.max_frames),
                        ("--max-sessions", args.max_sessions), ("--idle-minutes", args.idle_minutes)):
        if not value > 0:
            raise MaskmlError(f"{flag} {value}: give a positive number")
    return Limits(max_upload_bytes=int(args.max_upload_mb * 2**20), max_frames=args.max_frames,
                  max_sessions=args.max_sessions, idle_seconds=args.idle_minutes * 60)


def run(args) -> None:
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ModuleNotFoundError as exc:
        raise MaskmlError(f"maskml serve needs {exc.name}, from the app extra: pip install 'maskml[app]'") from None
    import maskml
    from maskml.cli.track import parse_options, tracker_family
    from maskml.predict.cutie.tracker import resolve_options
    from maskml.serve.app import create_app
    from maskml.serve.server import bind, is_loopback, server_for, url_of
    from maskml.serve.sessions import SessionManager

    args.on_interrupt = "stopped; the sessions' files are deleted"  # Ctrl-C is how it ends
    limits = limits_of(args)
    options = parse_options(args.option)
    if tracker_family(args.tracker, "--tracker", "--model") != "cutie":
        # maskml track runs a SAM 2 model over a file as a VideoSession (prompts on any frame, propagation both
        # ways); the sessions here track forward frame by frame, so their exports would not be its files
        raise MaskmlError(f"--tracker {args.tracker}: maskml serve tracks with Cutie (cutie_small, cutie_base); "
                          f"SAM 2 video sessions are not served yet (use maskml track or maskml demo for them)")
    resolve_options(options)  # a wrong --option fails before the models load
    if args.token is not None and not args.token.strip():
        raise MaskmlError("--token is empty: give a token, or leave the option out")
    token = args.token or (None if is_loopback(args.host) else secrets.token_urlsafe(24))
    sock = bind(args.host, args.port)  # first, so a port in use is said before the models load
    try:
        backend = backend_options(args)
        prompter = maskml.load_model(args.model, checkpoint=args.checkpoint, device=args.device, **backend)
        tracker = maskml.load_model(args.tracker, checkpoint=args.tracker_checkpoint, device=args.device, **backend)
        manager = SessionManager(prompter, tracker, limits, tracker_options=options)
        app = create_app(manager, token, models=f"{args.model} + {args.tracker}")
        wildcard = args.host in ("0.0.0.0", "::", "")
        print(f"maskml serve: {args.model} + {args.tracker}, open {url_of(sock, token, '127.0.0.1' if wildcard else None)}"
              + (f" (listening on all addresses, port {sock.getsockname()[1]}: from another machine use its "
                 f"address with the same ?token=)" if wildcard else "") + "; Ctrl-C stops", flush=True)
        server_for(app).run(sockets=[sock])
    finally:
        sock.close()
