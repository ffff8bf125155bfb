from maskml.models.cutie.cutie import Cutie, build_cutie

__all__ = ["Cutie", "build_cutie"]
