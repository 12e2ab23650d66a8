"""Bottom-up-attention (BUTD / LXMERT) region features in plain torch + torchvision.ops.

The Visual Genome Faster R-CNN (ResNet-101 C4, 1600 classes, 400 attributes) whose
36 x 2048 region features LXMERT, UNITER and VisualBERT consume, re-implemented
without detectron2 so it runs in the pipeline's workers; detectron2 checkpoints
load by key name, through an unpickler that cannot execute code.

    extractor = RegionFeatureExtractor("butd-r101", weights="faster_rcnn_from_caffe_attr.pkl")
    [regions] = extractor.extract([pil_image])   # regions.features: (36, 2048) float16
"""

from vlcurate.extractors.regions.boxes import BoxSelection, select_lxmert, select_maxnms
from vlcurate.extractors.regions.checkpoint import (
    CheckpointError, LoadReport, load_checkpoint, read_checkpoint, save_detectron2_checkpoint,
)
from vlcurate.extractors.regions.config import RegionConfig, config_names, get_config
from vlcurate.extractors.regions.extractor import RegionFeatureExtractor, RegionFeatures
from vlcurate.extractors.regions.model import BottomUpAttentionDetector, build_detector

__all__ = [
    "BottomUpAttentionDetector", "BoxSelection", "CheckpointError", "LoadReport", "RegionConfig",
    "RegionFeatureExtractor", "RegionFeatures", "build_detector", "config_names", "get_config",
    "load_checkpoint", "read_checkpoint", "save_detectron2_checkpoint", "select_lxmert", "select_maxnms",
]
