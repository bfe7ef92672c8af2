"""FLOPs of the plain-ViT Mask2Former and its token-reduced backbones: traced == analytic,
every multiply-add op of the traced graph has a handle, dynamic models differ per image."""
from __future__ import annotations

import pytest
import torch

import pipelines.registry  # noqa: F401
from pipelines.models.token_cluster import ClusterViT
from pipelines.models.token_sample import SampleViT
from pipelines.stages import cost_model_vit as cm
from pipelines.stages.flop_handles import extra_flop_handles
from tests.conftest import REPO
from tests.unit.vit_helpers import VIT, plain_vit, same_weights

SPEC = cm.spec_from_cfg(VIT)
TINY_VIT = REPO / "configs" / "models" / "mask2former_vit-tiny_synthetic-128x128.py"
# aten ops with no handle that do no multiply-add (element-wise, indexing, sorting, reshaping)
FREE_OPS = {
    "aten::add", "aten::add_", "aten::sub", "aten::rsub", "aten::mul", "aten::div", "aten::pow",
    "aten::exp", "aten::log", "aten::sqrt", "aten::abs", "aten::neg", "aten::cos", "aten::sin",
    "aten::gelu", "aten::relu", "aten::sigmoid", "aten::softmax", "aten::cumsum", "aten::sum",
    "aten::max", "aten::min", "aten::mean", "aten::topk", "aten::sort", "aten::argmin",
    "aten::gather", "aten::scatter", "aten::scatter_", "aten::scatter_add", "aten::scatter_add_",
    "aten::index", "aten::index_put_", "aten::masked_fill", "aten::masked_fill_", "aten::where",
    "aten::clamp", "aten::clamp_min", "aten::clamp_max", "aten::round", "aten::eq", "aten::ne",
    "aten::lt", "aten::le", "aten::gt", "aten::ge", "aten::__and__", "aten::__or__",
    "aten::bitwise_not", "aten::logical_not", "aten::isinf", "aten::isfinite", "aten::all",
    "aten::max_pool2d", "aten::im2col", "aten::meshgrid", "aten::repeat", "aten::flip",
    "aten::_shape_as_tensor", "aten::searchsorted", "aten::_unique2", "aten::linspace",
    "aten::upsample_bicubic2d", "aten::norm", "aten::linalg_vector_norm", "aten::fill_",
    "aten::zero_", "aten::full", "aten::copy_", "aten::new_zeros", "aten::ones_like",
    "aten::zeros_like", "aten::full_like", "aten::arange", "aten::select", "aten::slice",
    "aten::dropout", "aten::numel", "aten::expand_as", "aten::pad", "aten::feature_dropout",
    "aten::floor_divide", "aten::remainder",
}


def _traced(module, inputs):
    from mmengine.analysis import FlopAnalyzer
    from mmengine.analysis.complexity_analysis import _DEFAULT_SUPPORTED_FLOP_OPS

    analyzer = FlopAnalyzer(module, inputs)
    analyzer.clear_op_handles().set_op_handle(**dict(_DEFAULT_SUPPORTED_FLOP_OPS,
                                                     **extra_flop_handles()))
    analyzer.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    analyzer.tracer_warnings("none")
    with torch.no_grad():
        return analyzer.total(), analyzer.by_module(), analyzer.unsupported_ops()


def test_plain_vit_traced_equals_analytic():
    total, _, _ = _traced(plain_vit(), (torch.randn(1, 3, 64, 64),))
    assert total == cm.backbone_flops((64, 64), SPEC)["backbone"]


def test_block_flops_by_hand():
    # 65 tokens, width 32, MLP 128: norms 2*5*65*32, qkv 3*65*32^2, QK^T and AV 65^2*32 each,
    # out proj 65*32^2, MLP 2*4*65*32^2
    assert cm.block_flops(65, 32) == (10 * 65 * 32 + 3 * 65 * 1024 + 2 * 65 * 65 * 32
                                      + 65 * 1024 + 8 * 65 * 1024)


def _two_images():
    torch.manual_seed(1)
    x = torch.randn(2, 1, 3, 64, 64)
    x[1, :, :, 32:] = 0
    return x


def test_clustered_vit_traced_equals_analytic_and_differs_per_image():
    model = same_weights(ClusterViT, plain_vit(), anchor_fraction=0.25, cluster_layer=1,
                         window=2)
    totals = []
    for img in _two_images():
        total, by_module, _ = _traced(model, (img,))
        (m,) = model.last_token_counts
        ana = cm.backbone_flops((64, 64), SPEC, cm.clustered_layer_tokens(64, 4, 1, m),
                                cluster=(2, 8))
        assert total == ana["backbone"]
        # one 8x8 tile of tokens against its 12x12 grown tile, width 32
        assert by_module["clusterer"] == ana["cluster"] == 64 * 144 * 32
        totals.append(total)
    assert totals[0] != totals[1]
    assert max(totals) < cm.backbone_flops((64, 64), SPEC)["backbone"]


def test_sampled_vit_traced_equals_analytic_and_differs_per_image():
    model = same_weights(SampleViT, plain_vit(), ats_layers=(0, 1, 2, 3), budget=64)
    totals = []
    for img in _two_images():
        total, _, _ = _traced(model, (img,))
        kept = [c[0] for c in model.last_token_counts]
        assert total == cm.backbone_flops(
            (64, 64), SPEC, cm.sampled_layer_tokens(64, 4, (0, 1, 2, 3), kept))["backbone"]
        totals.append(total)
    assert totals[0] != totals[1]


def test_attention_handles_by_hand():
    class Attn(torch.nn.Module):
        def forward(self, q, k, v, bias):
            a = torch.nn.functional.scaled_dot_product_attention(q, k, v)
            return a, torch.baddbmm(bias, q[0], k[0].transpose(1, 2))

    q, k, v = torch.randn(1, 2, 5, 4), torch.randn(1, 2, 7, 4), torch.randn(1, 2, 7, 3)
    total, _, unsupported = _traced(Attn(), (q, k, v, torch.zeros(2, 5, 7)))
    assert total == 2 * 5 * 7 * (4 + 3) + 2 * 5 * 4 * 7
    assert not unsupported


@pytest.mark.parametrize("backbone", [
    dict(type="ClusterViT", anchor_fraction=0.25, cluster_layer=1),
    dict(type="SampleViT", ats_layers=[2, 3, 4, 5], budget=64),
], ids=["cluster", "sample"])
def test_every_multiply_add_op_of_the_vit_mask2former_has_a_handle(backbone):
    from mmengine.config import Config

    from pipelines.registry import build_model
    from pipelines.stages.flops import inference_forward

    cfg = Config.fromfile(str(TINY_VIT))
    cfg.model.backbone.update(backbone)
    model = build_model(cfg)
    _, _, unsupported = _traced(inference_forward(model, (64, 64)),
                                (torch.randn(1, 3, 64, 64),))
    assert set(unsupported) <= FREE_OPS, set(unsupported) - FREE_OPS


def test_all_anchors_costs_exactly_the_plain_vit():
    model = same_weights(ClusterViT, plain_vit(), anchor_fraction=1.0)
    total, _, _ = _traced(model, (torch.randn(1, 3, 64, 64),))
    assert total == cm.backbone_flops((64, 64), SPEC)["backbone"]
