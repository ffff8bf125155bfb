from maskml.predict.sam2.session import PropagationStep, VideoSession

__all__ = ["PropagationStep", "VideoSession"]
