from maskml.predict.image import ImagePredictor, Prediction

__all__ = ["ImagePredictor", "Prediction"]
