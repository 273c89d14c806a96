"""DeepLabv3+ (MobileNetV2 / ResNet-50 / deep-stem ResNet-101) with the ReCo representation head."""

from .backbones import BACKBONES, OUTPUT_STRIDES, build_backbone
from .deeplab import DeepLabV3Plus, build_model
from .heads import ASPP, Decoder, RepresentationHead

__all__ = ["ASPP", "BACKBONES", "OUTPUT_STRIDES", "Decoder", "DeepLabV3Plus", "RepresentationHead",
           "build_backbone", "build_model"]
