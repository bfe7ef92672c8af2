"""mmcv's compiled ops import in a fresh process the way a training job imports them (no pytest,
no CUDA initialised first): on a GPU node the CUDA build's `_ext` once crashed exactly there
while loading fine inside pytest. Here the CPU build; on a GPU node the CUDA build."""
from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize("code", [
    "import mmcv.ops",
    "import torch, mmcv, mmcv._ext",
    "import pipelines.registry, mmseg.models, mmdet.models; "
    "from mmcv.ops import MultiScaleDeformableAttention",
])
def test_compiled_ops_import_in_a_fresh_process(code):
    proc = subprocess.run([sys.executable, "-X", "faulthandler", "-c", code],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-3000:])
