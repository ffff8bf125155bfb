"""The demo's OpenCV window: mouse and keys go to a DemoSession, its pictures come back on screen.

It needs OpenCV built with window support (the opencv-python package, not opencv-python-headless)
and a display (a desktop session, or a virtual one such as Xvfb). The two builds must not be installed
side by side: both own the cv2 folder, so uninstalling either later removes cv2 for both.
"""
from __future__ import annotations

import os
import sys
from importlib.metadata import PackageNotFoundError, version

import cv2

from maskml.demo.session import DemoSession
from maskml.errors import MaskmlError

TITLE = "maskml demo"
MOUSE_EVENTS = {cv2.EVENT_LBUTTONDOWN: "left_down", cv2.EVENT_LBUTTONUP: "left_up",
                cv2.EVENT_RBUTTONDOWN: "right_down", cv2.EVENT_MOUSEMOVE: "move"}


def opencv_swap_commands() -> tuple[str, str]:
    """pip commands that replace the installed headless OpenCV by the desktop build of the same version,
    and back."""
    for headless in ("opencv-python-headless", "opencv-contrib-python-headless"):
        try:
            pinned = f"=={version(headless)}"
            break
        except PackageNotFoundError:
            continue
    else:  # OpenCV not installed by pip (a system or conda build): match the version cv2 reports
        headless, pinned = "opencv-python-headless", f"=={cv2.__version__}.*"
    desktop = headless.removesuffix("-headless")
    return (f"pip uninstall -y {headless} && pip install '{desktop}{pinned}'",
            f"pip uninstall -y {desktop} && pip install '{headless}{pinned}'")


def desktop_opencv_advice() -> str:
    swap, back = opencv_swap_commands()
    return (f"replace the headless OpenCV by its desktop build (never both: they share the cv2 folder): {swap} "
            f"(back: {back}); without a window, maskml segment and maskml track take clicks and boxes as "
            f"--point and --box")


def check_display() -> None:
    """MaskmlError unless a window can be opened (before any model is loaded)."""
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        # checked here: OpenCV's Qt backend aborts the whole process when it finds no display
        raise MaskmlError("no display to open the demo window on (DISPLAY is not set): run it in a desktop "
                          "session, or under a virtual display: xvfb-run maskml demo ...")
    try:
        cv2.namedWindow(TITLE, cv2.WINDOW_AUTOSIZE | cv2.WINDOW_GUI_NORMAL)
        cv2.setWindowTitle(TITLE, f"{TITLE} (loading)")
    except cv2.error:
        raise MaskmlError(f"this OpenCV has no window support: {desktop_opencv_advice()}") from None


def run_window(session: DemoSession, title: str) -> None:
    """Show the session until q, Esc or closing the window, titled "maskml demo: <title>"."""
    check_display()
    cv2.setWindowTitle(TITLE, f"{TITLE}: {title}")

    def on_mouse(event, x, y, flags, param) -> None:
        if event in MOUSE_EVENTS:
            session.on_mouse(MOUSE_EVENTS[event], x, y)

    cv2.setMouseCallback(TITLE, on_mouse)
    try:
        while True:
            cv2.imshow(TITLE, cv2.cvtColor(session.render(), cv2.COLOR_RGB2BGR))
            key = cv2.waitKey(1 if session.playing else 30)
            if key >= 0 and not session.on_key(chr(key & 0xFF)):
                break
            if cv2.getWindowProperty(TITLE, cv2.WND_PROP_VISIBLE) < 1:
                break
            session.tick()
    finally:
        cv2.destroyAllWindows()
