"""AiluRus token clustering (pipelines/models/token_cluster.py) on a tiny random ViT."""
from __future__ import annotations

import pytest
import torch

import pipelines.registry  # noqa: F401
from pipelines.models import token_cluster as tc
from pipelines.models.vit_tokens import layer_forward
from tests.unit.vit_helpers import VIT, plain_vit, same_weights

def _images():
    """Two images whose clusterings differ: noise, and a smooth ramp with one noisy corner."""
    g = torch.Generator().manual_seed(1)
    noise = torch.randn(3, 64, 64, generator=g)
    ramp = torch.linspace(-1, 1, 64).expand(3, 64, 64).clone()
    ramp[:, :16, :16] = torch.randn(3, 16, 16, generator=g)
    return torch.stack([noise, ramp])


def test_every_token_an_anchor_is_the_plain_vit_exactly():
    ref = plain_vit()
    x = _images()
    with torch.no_grad():
        expected = ref(x)
        for kw in (dict(anchor_fraction=1.0), dict(density_threshold=1e-30, cluster_layer=2)):
            model = same_weights(tc.ClusterViT, ref, **kw)
            got = model(x)
            assert model.last_token_counts == [64, 64]
            assert all(torch.equal(a, b) for a, b in zip(expected, got))


def test_reduced_path_layer_matches_upstream_block():
    """The masked attention written out (used on the clusters) is the upstream block's math."""
    ref = plain_vit()
    x = torch.randn(2, 65, 32)
    with torch.no_grad():
        for layer in ref.layers:
            torch.testing.assert_close(layer_forward(layer, x), layer(x), rtol=1e-5, atol=1e-5)


def test_clustering_reduces_tokens_and_changes_output():
    ref = plain_vit()
    x = _images()
    model = same_weights(tc.ClusterViT, ref, anchor_fraction=0.25, cluster_layer=1)
    with torch.no_grad():
        expected, got = ref(x), model(x)
    counts = model.last_token_counts
    assert all(16 <= c < 64 for c in counts)  # at least the anchors, fewer than all tokens
    assert torch.equal(expected[0], got[0]) and torch.equal(expected[1], got[1]) is False


def test_batch_with_different_token_counts_equals_each_image_alone():
    ref = plain_vit()
    x = _images()
    model = same_weights(tc.ClusterViT, ref, anchor_fraction=0.25, cluster_layer=1,
                         merge_radius=1, proportional_attn=True)
    with torch.no_grad():
        batch = model(x)
        counts = model.last_token_counts
        alone = []
        for i in range(2):
            alone.append(model(x[i:i + 1]))
            assert model.last_token_counts == [counts[i]]
    assert counts[0] != counts[1]
    for level in range(len(batch)):
        torch.testing.assert_close(batch[level], torch.cat([a[level] for a in alone]),
                                   rtol=1e-5, atol=1e-5)


def _global_dpc(x, k):
    """Unwindowed DPC-KNN written directly from the definition (reference for the windowed one)."""
    n, c = x.shape
    d = torch.cdist(x[None].double(), x[None].double())[0] / c ** 0.5
    rho = torch.exp(-(d ** 2).topk(k, dim=1, largest=False).values.mean(1))
    delta = torch.empty(n, dtype=torch.float64)
    for i in range(n):
        denser = [j for j in range(n) if rho[j] > rho[i] or (rho[j] == rho[i] and j < i)]
        delta[i] = d[i, denser].min() if denser else d.max()
    return rho * delta


def test_window_covering_the_grid_is_global_dpc_knn():
    torch.manual_seed(2)
    x = torch.randn(1, 16, 8, dtype=torch.float64)
    index, valid = tc.window_index((4, 4), radius=4)
    sq = tc.window_sq_dists(x, (4, 4), 4, valid, tile=3)
    score, _ = tc.dpc_scores(sq, index, valid, k=5)
    torch.testing.assert_close(score[0], _global_dpc(x[0], 5), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("hw, radius, tile", [((5, 7), 2, 8), ((5, 7), 1, 2), ((6, 4), 3, 4)])
def test_tiled_window_distances_are_the_direct_ones(hw, radius, tile):
    torch.manual_seed(4)
    n = hw[0] * hw[1]
    x = torch.randn(2, n, 6, dtype=torch.float64)
    index, valid = tc.window_index(hw, radius)
    got = tc.window_sq_dists(x, hw, radius, valid, tile)
    nb = x[:, index.clamp_min(0)]  # [B, N, K, C]
    direct = ((x[:, :, None] - nb) ** 2).sum(-1) / 6
    assert torch.isinf(got[:, ~valid]).all()
    torch.testing.assert_close(got[:, valid], direct[:, valid])


def test_anchor_ties_go_to_the_lower_index():
    score = torch.tensor([[1.0, 3.0, 3.0, 3.0, 0.5]])
    assert tc.select_anchors(score, 0.4).tolist() == [[False, True, True, False, False]]
    assert tc.select_anchors(score, None, 0.3).tolist() == [[True, True, True, True, False]]


def test_merge_restore_means_and_adjacency():
    # 1x4 grid; anchor at 0 (features 0) and 3; token 1 is adjacent to anchor 0 only, token 2 to 3
    x = torch.tensor([[[0.0], [2.0], [10.0], [20.0]]])
    index, valid = tc.window_index((1, 4), radius=1)
    sq = tc.window_sq_dists(x, (1, 4), 1, valid)
    anchors = torch.tensor([[True, False, False, True]])
    rep = tc.assign_clusters(anchors, sq, index, radius=1)
    assert rep.tolist() == [[0, 0, 3, 3]]
    merged, size, valid_m, slot = tc.merge_tokens(x, rep)
    assert merged[0, :, 0].tolist() == [1.0, 15.0] and size.tolist() == [[2.0, 2.0]]
    assert tc.restore_tokens(merged, slot)[0, :, 0].tolist() == [1.0, 1.0, 15.0, 15.0]
    # a token adjacent to no anchor stays on its own
    rep = tc.assign_clusters(torch.tensor([[True, False, False, False]]), sq, index, radius=1)
    assert rep.tolist() == [[0, 0, 2, 3]]
    # with a merge radius of 2, token 2 reaches anchor 0; with both in reach the nearer wins,
    # and an exact tie goes to the lower index
    index, valid = tc.window_index((1, 4), radius=2)
    one = torch.tensor([[True, False, False, False]])
    for feats, expected in (([0.0, 2.0, 10.0, 20.0], [0, 0, 0, 3]),
                            ([0.0, 2.0, 12.0, 20.0], [0, 0, 3, 3])):
        y = torch.tensor(feats).view(1, 4, 1)
        sq = tc.window_sq_dists(y, (1, 4), 2, valid)
        assert tc.assign_clusters(one, sq, index, 2, merge_radius=2).tolist() == [[0, 0, 0, 3]]
        assert tc.assign_clusters(anchors, sq, index, 2, merge_radius=2).tolist() == [expected]


def test_token_count_falls_with_the_anchor_fraction():
    ref = plain_vit()
    x = _images()
    counts = []
    with torch.no_grad():
        for f in (1.0, 0.75, 0.5, 0.25):
            # merging over the window (merge_radius=None): with the published radius 1 the count
            # need not fall monotonically (each added anchor also absorbs its neighbours)
            model = same_weights(tc.ClusterViT, ref, anchor_fraction=f, cluster_layer=1,
                                 merge_radius=None)
            model(x)
            counts.append(model.last_token_counts)
    for i in range(2):
        per_image = [c[i] for c in counts]
        assert per_image == sorted(per_image, reverse=True) and len(set(per_image)) == 4


def test_paper_defaults_adjacent_merge_after_the_second_block():
    from mmengine.config import Config

    from tests.conftest import REPO

    model = tc.ClusterViT(**VIT)
    assert model.clusterer.merge_radius == 1 and model.cluster_layer == 1
    assert tc.ClusterViT(**VIT, merge_radius=None).clusterer.merge_radius == 2  # the window
    cfg = Config.fromfile(str(REPO / "configs/models/mask2former_vit-b16-cluster_ade20k-512x512.py"))
    assert cfg.model.backbone.cluster_layer == 1 and cfg.model.backbone.merge_radius == 1


@pytest.mark.parametrize("kw, match", [
    (dict(cluster_layer=3), "cluster_layer"),
    (dict(cluster_layer=-1), "cluster_layer"),
    (dict(anchor_fraction=0.0), "anchor_fraction"),
    (dict(anchor_fraction=1.5), "anchor_fraction"),
    (dict(density_threshold=2.0), "density_threshold"),
    (dict(window=0), "window"),
    (dict(k=0), "k must"),
    (dict(window=1, merge_radius=2), "merge_radius"),
])
def test_bad_knobs_are_refused_when_built(kw, match):
    with pytest.raises(ValueError, match=match):
        tc.ClusterViT(**VIT, **kw)


# ----------------------------------------------------------------------------- pixel decoder
def _pixel_decoders(**kw):
    """The tiny ViT config's pixel decoder (as its Mask2FormerHead builds it) and a
    ClusterPixelDecoder with its weights."""
    from mmengine.config import Config
    from mmseg.registry import MODELS

    from tests.conftest import REPO

    cfg = Config.fromfile(str(REPO / "configs/models/mask2former_vit-tiny_synthetic-128x128.py"))
    head = cfg.model.decode_head
    pd_cfg = dict(head.pixel_decoder, in_channels=head.in_channels, strides=head.strides,
                  feat_channels=head.feat_channels, out_channels=head.out_channels,
                  num_outs=head.num_transformer_feat_level,
                  type="mmdet.MSDeformAttnPixelDecoder")
    torch.manual_seed(0)
    plain = MODELS.build(pd_cfg)
    plain.init_weights()
    plain.eval()
    clustered = MODELS.build(dict(pd_cfg, type="mmdet.ClusterPixelDecoder", **kw))
    clustered.load_state_dict(plain.state_dict())
    clustered.eval()
    return plain, clustered


def _features(batch=2):
    torch.manual_seed(5)
    feats = [torch.randn(batch, 96, s, s) for s in (32, 16, 8, 4)]
    feats[1][1] = feats[1][1].mean(dim=(1, 2), keepdim=True)  # image 2: a flat res4 map
    return feats


def test_pixel_decoder_every_query_an_anchor_is_the_upstream_one_exactly():
    plain, clustered = _pixel_decoders(anchor_fraction=1.0, cluster_layer=0)
    feats = _features()
    with torch.no_grad():
        (m1, ms1), (m2, ms2) = plain(feats), clustered(feats)
    assert torch.equal(m1, m2) and all(torch.equal(a, b) for a, b in zip(ms1, ms2))


def test_pixel_decoder_batch_with_different_query_counts_equals_alone():
    plain, clustered = _pixel_decoders(anchor_fraction=0.25, cluster_layer=2)
    feats = _features()
    with torch.no_grad():
        mask, multi = clustered(feats)
        counts = clustered.encoder.last_token_counts
        alone = []
        for i in range(2):
            alone.append(clustered([f[i:i + 1] for f in feats]))
            assert clustered.encoder.last_token_counts == [counts[i]]
        plain_mask, _ = plain(feats)
    assert counts[0] != counts[1] and max(counts) < 16 + 64 + 256
    assert not torch.allclose(mask, plain_mask)
    torch.testing.assert_close(mask, torch.cat([a[0] for a in alone]), rtol=1e-5, atol=1e-5)
    for level in range(len(multi)):
        torch.testing.assert_close(multi[level], torch.cat([a[1][level] for a in alone]),
                                   rtol=1e-5, atol=1e-5)


def test_pixel_decoder_cluster_layer_beyond_the_encoder_is_refused():
    with pytest.raises(ValueError, match="cluster_layer"):
        _pixel_decoders(cluster_layer=6)


def test_cli_refuses_a_cluster_layer_beyond_the_depth_in_one_line():
    from tests.conftest import REPO, run_cli

    cfg = REPO / "configs/models/mask2former_vit-tiny-cluster_synthetic-128x128.py"
    done = run_cli("flops", str(cfg), "--cfg-options", "model.backbone.cluster_layer=9")
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert lines[-1].startswith("error:") and "cluster_layer must be an int in [0, 4]" in lines[-1]
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("method, alias, value", [
    ("token_cluster", "anchors", 0), ("token_cluster", "anchors", 1.5),
    ("token_cluster", "density_threshold", 0.0), ("token_cluster", "cluster_window", 0),
    ("token_cluster", "cluster_k", 0), ("token_cluster", "cluster_layer", -1),
    ("token_sample", "ats_budget", 0), ("token_sample", "ats_layers", [2, -1]),
    ("cluster_pixel_decoder", "pd_anchors", 1.01),
])
def test_axes_refuse_out_of_range_values_in_one_line(method, alias, value):
    """The grid reads AXES without importing the module and checks every value before a job."""
    from pipelines.axes import method_axes
    from pipelines.errors import UserError

    axis = method_axes(method)[alias]
    with pytest.raises(UserError) as err:
        axis.check(value, f"grid.variants.v.axes.{alias}")
    assert "\n" not in str(err.value) and alias in str(err.value)
