"""Import this (configs do, through ``custom_imports``) to register every plug-in.

It applies the stack fixes of :mod:`pipelines.compat`, then imports the modules whose
``@MODELS.register_module()`` / ``@DATASETS.register_module()`` decorators fill mmseg's and
mmdet's registries, so a config can name ``SyntheticShapesDataset`` or a pixel decoder by type.
"""
from pipelines import compat

compat.apply()

import pipelines.data.dataset  # noqa: E402,F401
import pipelines.models  # noqa: E402,F401
import pipelines.stages.metrics  # noqa: E402,F401
