"""MMSeg / MMDet plug-ins for the efficient-encoder methods, one file per method.

Every module of this package is imported (found with :mod:`pkgutil`, so a new method file needs
no edit here): importing one runs its ``@MODELS.register_module()`` decorators.
"""
import importlib
import pkgutil

from pipelines.models import deform_attn

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

deform_attn.install()  # mmdet's deformable layers: no host syncs, bfloat16-safe (deform_attn.py)
