"""Paper 2 grid: infection segmentation, smp unet with a resnet18 encoder (see base.py)."""

from configs.paper2 import base


def get_config():
    return base.variant("infection", "unet", "resnet18")
