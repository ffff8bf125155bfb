"""`maskml demo`: click on objects in a video or a live camera and watch them tracked."""
from maskml.demo.session import DemoSession

__all__ = ["DemoSession"]
