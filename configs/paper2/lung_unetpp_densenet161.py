"""Paper 2 grid: lung segmentation, smp unetpp with a densenet161 encoder (see base.py)."""

from configs.paper2 import base


def get_config():
    return base.variant("lung", "unetpp", "densenet161")
