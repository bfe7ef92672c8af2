"""Every method on the GPU (skipped without CUDA): a forward at batch 2 in fp32,
fp16 and bf16 autocast, one training step, and ECO-M2F's gated mixed-exit batch.

Run on a GPU node by ``bash workflow/scripts/gpu_check.sh run`` (workflow/README.md, "On a GPU
cluster"). Random weights, tiny synthetic configs at 64x64, so each test takes seconds.
"""
from __future__ import annotations

import pytest
import torch

from tests.conftest import REPO

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

MODELS = REPO / "configs" / "models"
CONFIGS = {
    "baseline_r18": "mask2former_r18_synthetic-128x128.py",
    "pro_scale": "mask2former_r18_proscale-333_synthetic-128x128.py",
    "eco_m2f": "mask2former_r18_ecom2f_synthetic-128x128.py",
    "eco_m2f_pro_scale": "mask2former_r18_proscale-333-ecom2f_synthetic-128x128.py",
    "plain_vit": "mask2former_vit-tiny_synthetic-128x128.py",
    "ailurus": "mask2former_vit-tiny-cluster_synthetic-128x128.py",
    "ats": "mask2former_vit-tiny-ats_synthetic-128x128.py",
    "pixel_decoder_cluster": "mask2former_vit-tiny-pdcluster_synthetic-128x128.py",
}
HW = (64, 64)
DTYPES = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}


def _model(name):
    import pipelines.registry  # noqa: F401
    from pipelines.config import load_config
    from pipelines.registry import build_model

    torch.manual_seed(0)
    cfg = load_config(MODELS / CONFIGS[name])
    return build_model(cfg).cuda(), cfg


def _autocast(precision):
    dtype = DTYPES[precision]
    return torch.autocast("cuda", dtype=dtype, enabled=dtype is not None)


@pytest.mark.parametrize("precision", sorted(DTYPES))
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_forward_batch_2(name, precision):
    from pipelines.stages.flops import inference_forward

    model, _ = _model(name)
    forward = inference_forward(model.eval(), HW)
    img = torch.randn(2, 3, *HW, device="cuda")
    with torch.no_grad(), _autocast(precision):
        out = forward(img)
    assert out.shape[0] == 2 and out.shape[-2:] == HW
    assert torch.isfinite(out.float()).all()
    if precision != "fp32":  # autocast stays close to fp32 on random weights
        with torch.no_grad():
            ref = forward(img)
        assert (out.float() - ref).abs().max() < 0.2 * ref.abs().max() + 1e-3


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_one_training_step(name):
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample

    model, cfg = _model(name)
    model.train()
    classes = cfg.model.decode_head.num_classes
    samples = []
    for _ in range(2):
        s = SegDataSample(metainfo=dict(img_shape=HW, pad_shape=HW, ori_shape=HW))
        s.gt_sem_seg = PixelData(data=torch.randint(0, classes, (1, *HW), device="cuda"))
        samples.append(s)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    before = [p.detach().clone() for p in model.parameters() if p.requires_grad]
    losses = model.loss(torch.randn(2, 3, *HW, device="cuda"), samples)
    total = sum(v for k, v in losses.items() if "loss" in k)
    assert torch.isfinite(total)
    total.backward()
    opt.step()
    after = [p for p in model.parameters() if p.requires_grad]
    assert any(not torch.equal(a, b) for a, b in zip(after, before))


@pytest.mark.parametrize("precision", sorted(DTYPES))
def test_gated_mixed_exit_batch_equals_each_image_alone(precision):
    """ECO-M2F's mixed batch (exits 2..6) on the GPU: each image as if it ran alone."""
    model, _ = _model("eco_m2f")
    pd = model.eval().decode_head.pixel_decoder
    img = torch.randn(5, 3, *HW, device="cuda")
    with torch.no_grad(), _autocast(precision):
        feats = model.extract_feat(img)
        mixed = pd.forward_encoder(feats, [2, 3, 4, 5, 6])
        alone = [pd.forward_encoder([f[i:i + 1] for f in feats], e)
                 for i, e in enumerate([2, 3, 4, 5, 6])]
    tol = 1e-4 if precision == "fp32" else 3e-2
    for level, x in enumerate(mixed):
        torch.testing.assert_close(x.float(), torch.cat([a[level] for a in alone]).float(),
                                   rtol=tol, atol=tol)


def test_bf16_deformable_attention_runs_and_matches_fp32():
    """mmcv's kernel has no bf16: DeformAttn runs it in fp32 under bf16 autocast."""
    import pipelines.registry  # noqa: F401
    from pipelines.models.deform_attn import DeformAttn
    from pipelines.models.pro_scale import level_tensors

    torch.manual_seed(0)
    attn = DeformAttn(embed_dims=64, num_heads=4, num_levels=3, num_points=4,
                      batch_first=True).cuda().eval()
    shapes = ((4, 4), (8, 8), (16, 16))
    spatial, start = level_tensors(shapes, torch.device("cuda"))
    n = sum(h * w for h, w in shapes)
    kw = dict(query=torch.randn(2, n, 64, device="cuda"),
              reference_points=torch.rand(2, n, 3, 2, device="cuda"),
              spatial_shapes=spatial, level_start_index=start)
    with torch.no_grad():
        ref = attn(**kw)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = attn(**kw)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, rtol=5e-2, atol=5e-2)
