r"""Paper 2's cascaded scheme: infection segmentation, smp FPN DenseNet-161, reading the X-ray
masked by a lung model first (see base.py; its parallel twin is infection_fpn_densenet161.py).

Paper 2 trained FPN DenseNet-161 both ways and found the parallel scheme slightly better
(87.08% against 86.84% DSC). To rerun the comparison, train a lung model, then both:

    python scripts/train.py --config configs/paper2/lung_fpn_densenet121.py \
        --workdir runs/p2_lung --config.data.protocol=official --config.fold=None \
        --config.data.manual_dir="/data/COVID-QU-Ex"
    python scripts/cross_validate.py --config configs/paper2/infection_fpn_densenet161.py \
        --workdir runs/p2_inf_parallel --config.data.manual_dir="/data/COVID-QU-Ex"
    python scripts/cross_validate.py \
        --config configs/paper2/infection_fpn_densenet161_cascaded.py \
        --workdir runs/p2_inf_cascaded --config.data.manual_dir="/data/COVID-QU-Ex" \
        --config.model.cascade.lung_run=runs/p2_lung

(with `--config.model.encoder_weights=...` for ImageNet encoders). The lung run is trained
on the lung set's Train and Val folders only, so it never sees a Test image either.
"""

from configs.paper2 import base


def get_config():
    return base.cascaded_variant("infection", "fpn", "densenet161")
