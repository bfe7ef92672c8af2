"""GPU checks (skipped without CUDA): mmcv's deformable-attention kernel against its PyTorch
fallback, and a short real training of the tiny PRO-SCALE model on the GPU."""
from __future__ import annotations

import pytest
import torch

from tests.conftest import REPO, TINY_OPTIONS, run_cli

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def _mmcv_cuda_ops() -> bool:
    try:
        from mmcv.utils import ext_loader

        ext = ext_loader.load_ext("_ext", ["ms_deform_attn_forward"])
        return hasattr(ext, "ms_deform_attn_forward") and torch.version.cuda is not None
    except Exception:  # noqa: BLE001 - any failure means the kernel is not there
        return False


@pytest.mark.skipif(not _mmcv_cuda_ops(), reason="mmcv was built without CUDA kernels")
def test_deform_attn_kernel_matches_pytorch_path():
    from mmcv.ops.multi_scale_deform_attn import (MultiScaleDeformableAttnFunction,
                                                   multi_scale_deformable_attn_pytorch)

    torch.manual_seed(0)
    shapes = torch.tensor([[4, 4], [8, 8], [16, 16]], device="cuda")
    start = torch.cat((shapes.new_zeros(1), shapes.prod(1).cumsum(0)[:-1]))
    n_value = int(shapes.prod(1).sum())
    value = torch.rand(2, n_value, 8, 32, device="cuda", dtype=torch.float64)
    loc = torch.rand(2, 50, 8, 3, 4, 2, device="cuda", dtype=torch.float64)
    weights = torch.rand(2, 50, 8, 3, 4, device="cuda", dtype=torch.float64)
    weights = weights / weights.sum((-1, -2), keepdim=True)
    fast = MultiScaleDeformableAttnFunction.apply(value, shapes, start, loc, weights, 64)
    slow = multi_scale_deformable_attn_pytorch(value, shapes, loc, weights)
    torch.testing.assert_close(fast, slow, rtol=1e-6, atol=1e-6)


def test_tiny_proscale_trains_on_gpu(tmp_path, synthetic_root):
    config = REPO / "configs/models/mask2former_r18_proscale-333_synthetic-128x128.py"
    proc = run_cli("train", str(config), "--work-dir", str(tmp_path / "w"), "--data-root",
                   str(synthetic_root), "--no-progress", "--cfg-options", *TINY_OPTIONS,
                   "val_dataloader.dataset.pipeline.1.scale=(64,64)", "train_cfg.max_iters=4",
                   "train_cfg.val_interval=4", "default_hooks.checkpoint.interval=4")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "w" / "iter_4.pth").is_file()
