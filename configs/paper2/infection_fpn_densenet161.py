"""Paper 2 grid: infection segmentation, smp fpn with a densenet161 encoder (see base.py)."""

from configs.paper2 import base


def get_config():
    return base.variant("infection", "fpn", "densenet161")
