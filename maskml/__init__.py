"""maskml: promptable image and video object segmentation in native PyTorch."""
from maskml.errors import MaskmlError
from maskml.predict.automatic import AutomaticMaskGenerator
from maskml.predict.cutie import TrackerOutput, VideoTracker
from maskml.predict.sam2 import Sam2Tracker, VideoSession
from maskml.predict.image import ImagePredictor, Prediction
from maskml.predict.pipeline import Pipeline, Prompt, Tracker
from maskml.zoo import build_model, list_models, load_model

__version__ = "0.1.0"

__all__ = ["AutomaticMaskGenerator", "ImagePredictor", "MaskmlError", "Pipeline", "Prediction", "Prompt", "Sam2Tracker", "Tracker", "TrackerOutput", "VideoSession", "VideoTracker", "build_model", "list_models", "load_model", "__version__"]
