from maskml.models.sam.mask_decoder import DecoderOutput, MaskDecoder
from maskml.models.sam.prompt_encoder import PromptEncoder
from maskml.models.sam.sam import Sam, build_sam
from maskml.models.sam.transformer import TwoWayTransformer

__all__ = ["DecoderOutput", "MaskDecoder", "PromptEncoder", "Sam", "TwoWayTransformer", "build_sam"]
