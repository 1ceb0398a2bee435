"""Paper 2 grid: infection segmentation, smp unetpp with a densenet121 encoder (see base.py)."""

from configs.paper2 import base


def get_config():
    return base.variant("infection", "unetpp", "densenet121")
