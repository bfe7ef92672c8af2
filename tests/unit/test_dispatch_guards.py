"""GPU guards that run on the CPU: per method, the ATen ops a forward
dispatches (pipelines/stages/dispatch_count.py) at batch 1, 4 and 8, eval mode, no grad, tiny sizes.

* host-sync ops (``.item()``/``int()``/``bool()`` -> ``_local_scalar_dense``, ``.tolist()``,
  ``nonzero``, ``unique``, boolean-mask indexing) at the documented count of each method
  (``pipelines/models/README.md``, "GPU: syncs and loops");
* the number of dispatched ops does not grow with the batch (no per-image Python loop): equal at
  batch 4 and 8, and at most a few percent above batch 1 (a batch-1 tensor is a view where a
  larger batch needs a copy, e.g. 42 ``clone`` in the 6-layer pixel decoder).

Also: the batched ATS sampling picks exactly what the per-image one picks, the sync-free
deformable attention equals mmcv's, and under bfloat16 the deformable kernel runs in float32.
"""
from __future__ import annotations

import pytest
import torch

import pipelines.registry  # noqa: F401
from pipelines.stages.dispatch_count import DispatchCounter, count_call, count_forward
from tests.unit.test_pro_scale import build, features
from tests.unit.vit_helpers import plain_vit, same_weights

BATCHES = (1, 4, 8)

#: documented host syncs per forward (pipelines/models/README.md, "GPU: syncs and loops")
SYNCS = {
    "pro_scale": 0, "pro_scale_baseline_schedule": 0, "eco_m2f_mixed_exits": 0,
    "eco_m2f_gate": 1,  # the gate's exits per image go to the host once (.tolist)
    "mmdet_baseline": 15,  # mmdet's own MSDeformAttnPixelDecoder.forward (not ours), see README
    "plain_vit": 0,
    "ailurus": 1,  # the cluster counts per image (padding size of the later blocks)
    "ats": 3,  # one per ATS block (3 here): the kept counts per image
}


def assert_no_batch_loop(counters: dict, name: str) -> None:
    ops = {b: c.total for b, c in counters.items()}
    assert ops[4] == ops[8], f"{name}: ops grow with the batch {ops}"
    assert ops[8] <= 1.15 * ops[1], f"{name}: ops grow with the batch {ops}"
    for b, c in counters.items():
        assert c.num_syncs == SYNCS[name], f"{name} batch {b}: syncs {dict(c.syncs)}"


# --------------------------------------------------------------------------- the counter itself
def test_counter_sees_syncs_and_per_image_loops():
    x = torch.randn(4, 3)
    with DispatchCounter() as c:
        x.sum().item()
        x.nonzero()
        x[x > 0]
        x.tolist()
        bool(x.any())
    assert c.syncs["aten::_local_scalar_dense"] == 2 and c.syncs["aten::nonzero"] == 1
    assert c.syncs["aten::index[bool mask]"] == 1 and c.syncs["Tensor.tolist"] == 1
    loop = {b: count_call(lambda b=b: [t * 2 for t in torch.ones(b, 3)]) for b in (1, 8)}
    assert loop[8].total > loop[1].total  # a per-image loop shows up
    whole = {b: count_call(lambda b=b: torch.ones(b, 3) * 2) for b in (1, 8)}
    assert whole[8].total == whole[1].total and whole[8].num_syncs == 0


# --------------------------------------------------------------------------- pixel decoders
def _feats(b):
    return features(64, b)


@pytest.mark.parametrize("name, changes", [
    ("pro_scale", dict(type="ProScalePixelDecoder", schedule=(3, 3, 3), trc=True, lpe=True)),
    ("pro_scale_baseline_schedule", dict(type="ProScalePixelDecoder", schedule=(0, 0, 6))),
    ("mmdet_baseline", dict()),
])
def test_pixel_decoder_guards(name, changes):
    counters = count_forward(_feats, build(**changes), BATCHES)
    assert_no_batch_loop(counters, name)


def test_eco_m2f_mixed_exit_batch_guards():
    """Exits 2..6 cycled over the batch: each layer runs once over the images still active, so
    the ops follow the distinct exits, not the images (batch 10 = batch 15; batch 5, one image
    per exit, has 7 fewer: its groups of one are views where larger groups need a copy)."""
    eco = build(type="EarlyExitPixelDecoder", min_layers=2)

    def forward(f):
        return eco.forward_encoder(f, [2 + i % 5 for i in range(f[0].shape[0])])

    counters = count_forward(_feats, forward, (5, 10, 15))
    assert counters[10].total == counters[15].total <= 1.05 * counters[5].total
    assert all(c.num_syncs == SYNCS["eco_m2f_mixed_exits"] for c in counters.values())
    fixed = count_forward(_feats, lambda f: eco.forward_encoder(f, 6), BATCHES)
    assert_no_batch_loop(fixed, "eco_m2f_mixed_exits")


def test_eco_m2f_gate_guards():
    gated = build(type="EarlyExitPixelDecoder", min_layers=2, test_exit="gate")
    counters = count_forward(_feats, gated.forward_encoder, (5, 8))
    for c in counters.values():
        assert c.num_syncs == SYNCS["eco_m2f_gate"] and c.syncs["Tensor.tolist"] == 1


# --------------------------------------------------------------------------- ViT backbones
def _images(b):
    g = torch.Generator().manual_seed(b)
    return torch.randn(b, 3, 64, 64, generator=g)


def test_plain_vit_guards():
    assert_no_batch_loop(count_forward(_images, plain_vit(), BATCHES), "plain_vit")


def test_ailurus_guards():
    from pipelines.models.token_cluster import ClusterViT

    model = same_weights(ClusterViT, plain_vit(), anchor_fraction=0.25, cluster_layer=1)
    assert_no_batch_loop(count_forward(_images, model, BATCHES), "ailurus")


def test_ats_guards():
    from pipelines.models.token_sample import SampleViT

    model = same_weights(SampleViT, plain_vit(), ats_layers=(1, 2, 3), budget=48)
    assert_no_batch_loop(count_forward(_images, model, BATCHES), "ats")


# --------------------------------------------------------------------------- same computation
def test_batched_ats_sampling_equals_the_per_image_sampling():
    from pipelines.models.token_sample import (
        inverse_transform_sample,
        inverse_transform_sample_batch,
    )

    g = torch.Generator().manual_seed(0)
    for trial in range(60):
        b, m = 4, int(torch.randint(1, 60, (), generator=g))
        counts = torch.randint(1, m + 1, (b,), generator=g)
        s = torch.rand(b, m, generator=g) ** float(torch.randint(1, 6, (), generator=g))
        if trial % 3 == 0:
            s[:, ::3] = 0  # ties and flat CDF stretches
        if trial % 7 == 0:
            s[0] = 0  # an image with no significance at all
        s = s.masked_fill(torch.arange(m)[None] >= counts[:, None], 0)
        s = s / s.sum(1, keepdim=True).clamp_min(1e-30)
        for grid in ("nonzero", "zero"):
            for levels, budget in ((1, None), (7, 5), (m, None), (3 * m, 2)):
                kept, kcount = inverse_transform_sample_batch(s, counts, levels, budget, grid)
                for j in range(b):
                    expected = inverse_transform_sample(s[j, :counts[j]], levels, budget, grid)
                    assert torch.equal(kept[j, :kcount[j]], expected)


def _deform_layers():
    from mmcv.ops import MultiScaleDeformableAttention

    from pipelines.models.deform_attn import DeformAttn

    torch.manual_seed(0)
    ours = DeformAttn(embed_dims=32, num_heads=4, num_levels=3, num_points=2, batch_first=True)
    ours.init_weights()
    ref = MultiScaleDeformableAttention(embed_dims=32, num_heads=4, num_levels=3, num_points=2,
                                        batch_first=True)
    ref.load_state_dict(ours.state_dict())
    return ours.eval(), ref.eval()


def _deform_inputs(batch=2, tagged=True):
    from pipelines.models.pro_scale import level_tensors

    shapes = ((2, 2), (4, 4), (8, 8))
    spatial_shapes, start = level_tensors(shapes, torch.device("cpu"))
    if not tagged:
        spatial_shapes = spatial_shapes.clone()  # a plain tensor: no host sizes attached
    n = sum(h * w for h, w in shapes)
    g = torch.Generator().manual_seed(1)
    return dict(query=torch.randn(batch, n, 32, generator=g),
                query_pos=torch.randn(batch, n, 32, generator=g),
                reference_points=torch.rand(batch, n, 3, 2, generator=g),
                spatial_shapes=spatial_shapes, level_start_index=start)


@pytest.mark.parametrize("tagged, syncs", [(True, 0), (False, 1)])
def test_deform_attn_equals_mmcv_and_reads_sizes_once_at_most(tagged, syncs):
    ours, ref = _deform_layers()
    kw = _deform_inputs(tagged=tagged)
    with torch.no_grad():
        torch.testing.assert_close(ours(**kw), ref(**kw), rtol=0, atol=0)
    assert count_call(lambda: ours(**kw)).num_syncs == syncs
    assert count_call(lambda: ref(**kw)).num_syncs == 10  # mmcv's own: assert + 3 levels x 3


def test_mmdet_layers_build_the_sync_free_attention():
    from mmdet.models.layers import DeformableDetrTransformerEncoderLayer

    from pipelines.models.deform_attn import DeformAttn

    layer = DeformableDetrTransformerEncoderLayer(self_attn_cfg=dict(embed_dims=32, num_levels=3,
                                                                     batch_first=True))
    assert type(layer.self_attn) is DeformAttn
    assert type(build().encoder.layers[0].self_attn) is DeformAttn


def test_bf16_runs_the_deformable_kernel_in_fp32():
    """mmcv's CUDA kernel has no bfloat16 dispatch: under bf16 autocast its inputs are cast to
    fp32, autocast is off inside, and the output comes back as bf16. The kernel itself needs a
    GPU (tests/gpu); here a stand-in with its signature records what it is given and computes
    the same sampling with mmcv's PyTorch path."""
    from mmcv.ops.multi_scale_deform_attn import multi_scale_deformable_attn_pytorch

    from pipelines.models.deform_attn import deform_sampling, host_shapes, kernel_dtype

    assert kernel_dtype(torch.bfloat16) == torch.float32
    assert kernel_dtype(torch.float16) == torch.float16
    seen = []

    def kernel(value, shapes, start, loc, weights, step):
        seen.append((value.dtype, loc.dtype, weights.dtype, torch.is_autocast_cpu_enabled()))
        return multi_scale_deformable_attn_pytorch(value, shapes, loc, weights)

    kw = _deform_inputs()
    shapes = host_shapes(kw["spatial_shapes"])
    g = torch.Generator().manual_seed(2)
    value = torch.randn(2, 84, 4, 8, generator=g)
    loc = torch.rand(2, 84, 4, 3, 2, 2, generator=g)
    weights = torch.rand(2, 84, 4, 3, 2, generator=g).softmax(-1)
    fp32 = deform_sampling(value, kw["spatial_shapes"], kw["level_start_index"], loc, weights,
                           64, shapes, kernel)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = deform_sampling(value.bfloat16(), kw["spatial_shapes"], kw["level_start_index"],
                              loc.bfloat16(), weights.bfloat16(), 64, shapes, kernel)
    assert seen[0] == (torch.float32, torch.float32, torch.float32, False)
    assert seen[1] == (torch.float32, torch.float32, torch.float32, False)
    assert out.dtype == torch.bfloat16
    rounded = [t.bfloat16().float() for t in (value, loc, weights)]  # the fp32 of bf16 inputs
    expected = multi_scale_deformable_attn_pytorch(rounded[0], kw["spatial_shapes"], *rounded[1:])
    torch.testing.assert_close(out, expected.bfloat16(), rtol=0, atol=0)
    # without a kernel (CPU, or a GPU without mmcv's kernel) the PyTorch path runs as given
    torch.testing.assert_close(
        deform_sampling(value, kw["spatial_shapes"], kw["level_start_index"], loc, weights, 64,
                        shapes), fp32, rtol=0, atol=0)
