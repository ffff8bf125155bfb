from maskml.models.sam2.image_encoder import HIERA_SIZES, ImageEncoder, build_image_encoder

__all__ = ["HIERA_SIZES", "ImageEncoder", "build_image_encoder"]
