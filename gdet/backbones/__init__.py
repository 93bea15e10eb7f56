"""The backbone registry and the GoogLeNet family; importing this package registers every network."""
from gdet.backbones.base import Backbone, BackboneOutput, count_macs, count_parameters, is_aux_key
from gdet.backbones.registry import build_backbone, get_backbone_builder, list_backbones, register_backbone

# Importing a module registers its networks.
from gdet.backbones import googlenet  # noqa: E402,F401  isort: skip
from gdet.backbones import googlenet_tv  # noqa: E402,F401  isort: skip
from gdet.backbones import bn_inception  # noqa: E402,F401  isort: skip
from gdet.backbones import inception_v3  # noqa: E402,F401  isort: skip
from gdet.backbones import inception_v4  # noqa: E402,F401  isort: skip

__all__ = [
    "is_aux_key",
    "Backbone",
    "BackboneOutput",
    "build_backbone",
    "count_macs",
    "count_parameters",
    "get_backbone_builder",
    "list_backbones",
    "register_backbone",
]
