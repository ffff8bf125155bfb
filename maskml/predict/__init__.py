from maskml.predict.automatic import AutomaticMaskGenerator
from maskml.predict.image import ImagePredictor, Prediction

__all__ = ["AutomaticMaskGenerator", "ImagePredictor", "Prediction"]
