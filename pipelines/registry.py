"""Import this (configs do, through ``custom_imports``) to register every plug-in.

It applies the stack fixes of :mod:`pipelines.compat`, then imports the modules whose
``@MODELS.register_module()`` / ``@DATASETS.register_module()`` decorators fill mmseg's and
mmdet's registries, so a config can name ``SyntheticShapesDataset`` or a pixel decoder by type.
:func:`build_model` builds a config's segmentor from those registries (random weights).
"""
import logging

from pipelines import compat
from pipelines.errors import UserError

compat.apply()

import pipelines.data.dataset  # noqa: E402,F401
import pipelines.models  # noqa: E402,F401
import pipelines.data.metrics  # noqa: E402,F401


def build_model(cfg):
    """Build the segmentor with random weights, in eval mode, on CPU. Build errors (unknown type,
    bad PRO-SCALE schedule) become one-line :class:`UserError`."""
    from mmseg.registry import MODELS
    from mmseg.utils import register_all_modules

    register_all_modules(init_default_scope=True)
    model_cfg = cfg.model.copy()
    if model_cfg.get("backbone") is not None:
        model_cfg.backbone["init_cfg"] = None  # random weights: never download a checkpoint
    model_cfg.pop("pretrained", None)
    try:
        model = MODELS.build(model_cfg)
    except (KeyError, ValueError, TypeError, AssertionError, RuntimeError) as err:
        # RuntimeError: torch refusing a size while building (num_queries=-3 -> an Embedding)
        msg = str(err.args[0] if isinstance(err, KeyError) and err.args else err)
        msg = " ".join(msg.split())
        raise UserError(f"cannot build the model of {cfg.filename}: {type(err).__name__}: "
                        f"{msg}") from None
    quiet_init_weights(model)
    return model.eval()


def quiet_init_weights(model) -> None:
    """``model.init_weights()`` without mmengine's per-parameter INFO log."""
    from mmengine.logging import MMLogger

    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        model.init_weights()
    finally:
        logger.setLevel(level)
