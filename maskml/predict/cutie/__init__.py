from maskml.predict.cutie.tracker import TrackerOutput, VideoTracker

__all__ = ["TrackerOutput", "VideoTracker"]
