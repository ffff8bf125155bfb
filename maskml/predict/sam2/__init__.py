from maskml.predict.sam2.session import PropagationStep, VideoSession
from maskml.predict.sam2.tracker import Sam2Tracker

__all__ = ["PropagationStep", "Sam2Tracker", "VideoSession"]
