"""State dicts in the key layout of the published ImageNet checkpoints the full-size configs
start from: the real names and shapes, random values (nothing is downloaded).

Written from the architectures (torchvision's ResNet-50, timm's ViT / DeiT, Microsoft's Swin),
not read from the models under test, so a renamed or reshaped key on either side shows up as a
missing or unexpected key.
"""
from __future__ import annotations

import importlib.util
from collections import OrderedDict
from pathlib import Path

import torch


def _fill(shapes: dict, seed: int) -> OrderedDict:
    g = torch.Generator().manual_seed(seed)
    out = OrderedDict()
    for name, shape in shapes.items():
        if name.endswith("num_batches_tracked"):
            out[name] = torch.tensor(7, dtype=torch.long)
        elif name.endswith("relative_position_index"):
            out[name] = torch.randint(0, 169, shape, generator=g)
        else:
            out[name] = torch.randn(shape, generator=g)
    return out


def _bn(prefix: str, c: int) -> dict:
    return {f"{prefix}.{k}": (c,) for k in ("weight", "bias", "running_mean", "running_var")} | {
        f"{prefix}.num_batches_tracked": ()}


def torchvision_resnet50(seed: int = 0) -> OrderedDict:
    """``torchvision.models.resnet50().state_dict()`` layout (``resnet50-0676ba61.pth``)."""
    s = {"conv1.weight": (64, 3, 7, 7), **_bn("bn1", 64)}
    inplanes = 64
    for i, (planes, blocks) in enumerate(((64, 3), (128, 4), (256, 6), (512, 3)), start=1):
        for b in range(blocks):
            p = f"layer{i}.{b}"
            s[f"{p}.conv1.weight"] = (planes, inplanes, 1, 1)
            s.update(_bn(f"{p}.bn1", planes))
            s[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
            s.update(_bn(f"{p}.bn2", planes))
            s[f"{p}.conv3.weight"] = (planes * 4, planes, 1, 1)
            s.update(_bn(f"{p}.bn3", planes * 4))
            if b == 0:
                s[f"{p}.downsample.0.weight"] = (planes * 4, inplanes, 1, 1)
                s.update(_bn(f"{p}.downsample.1", planes * 4))
            inplanes = planes * 4
    s["fc.weight"], s["fc.bias"] = (1000, 2048), (1000,)
    return _fill(s, seed)


def timm_vit(dims: int, depth: int = 12, patch: int = 16, img: int = 224,
             seed: int = 0) -> OrderedDict:
    """timm ``VisionTransformer`` layout (``jx_vit_base_p16_224-80ecf9dd.pth``,
    ``deit_small_patch16_224-cd65a155.pth``'s ``model``), with the ImageNet-1k head."""
    n = (img // patch) ** 2
    s = {"cls_token": (1, 1, dims), "pos_embed": (1, n + 1, dims),
         "patch_embed.proj.weight": (dims, 3, patch, patch), "patch_embed.proj.bias": (dims,)}
    for i in range(depth):
        p = f"blocks.{i}"
        s.update({f"{p}.norm1.weight": (dims,), f"{p}.norm1.bias": (dims,),
                  f"{p}.attn.qkv.weight": (3 * dims, dims), f"{p}.attn.qkv.bias": (3 * dims,),
                  f"{p}.attn.proj.weight": (dims, dims), f"{p}.attn.proj.bias": (dims,),
                  f"{p}.norm2.weight": (dims,), f"{p}.norm2.bias": (dims,),
                  f"{p}.mlp.fc1.weight": (4 * dims, dims), f"{p}.mlp.fc1.bias": (4 * dims,),
                  f"{p}.mlp.fc2.weight": (dims, 4 * dims), f"{p}.mlp.fc2.bias": (dims,)})
    s.update({"norm.weight": (dims,), "norm.bias": (dims,), "head.weight": (1000, dims),
              "head.bias": (1000,)})
    return _fill(s, seed)


def microsoft_swin_tiny(seed: int = 0) -> OrderedDict:
    """Microsoft's ``swin_tiny_patch4_window7_224.pth`` ``model`` layout (buffers included:
    ``relative_position_index`` and the shifted blocks' ``attn_mask``)."""
    c, window, res = 96, 7, 56
    s = {"patch_embed.proj.weight": (c, 3, 4, 4), "patch_embed.proj.bias": (c,),
         "patch_embed.norm.weight": (c,), "patch_embed.norm.bias": (c,)}
    for i, (depth, heads) in enumerate(zip((2, 2, 6, 2), (3, 6, 12, 24))):
        for j in range(depth):
            p = f"layers.{i}.blocks.{j}"
            s.update({f"{p}.norm1.weight": (c,), f"{p}.norm1.bias": (c,),
                      f"{p}.attn.relative_position_bias_table": ((2 * window - 1) ** 2, heads),
                      f"{p}.attn.relative_position_index": (window ** 2, window ** 2),
                      f"{p}.attn.qkv.weight": (3 * c, c), f"{p}.attn.qkv.bias": (3 * c,),
                      f"{p}.attn.proj.weight": (c, c), f"{p}.attn.proj.bias": (c,),
                      f"{p}.norm2.weight": (c,), f"{p}.norm2.bias": (c,),
                      f"{p}.mlp.fc1.weight": (4 * c, c), f"{p}.mlp.fc1.bias": (4 * c,),
                      f"{p}.mlp.fc2.weight": (c, 4 * c), f"{p}.mlp.fc2.bias": (c,)})
            if j % 2 and res > window:  # shifted windows keep their mask as a buffer
                s[f"{p}.attn_mask"] = ((res // window) ** 2, window ** 2, window ** 2)
        if i < 3:
            p = f"layers.{i}.downsample"
            s.update({f"{p}.reduction.weight": (2 * c, 4 * c), f"{p}.norm.weight": (4 * c,),
                      f"{p}.norm.bias": (4 * c,)})
            c, res = 2 * c, res // 2
    s.update({"norm.weight": (c,), "norm.bias": (c,), "head.weight": (1000, c),
              "head.bias": (1000,)})
    return _fill(s, seed)


def mmseg_converter(name: str):
    """A key converter shipped with MMSeg (``tools/model_converters/<name>.py``)."""
    import mmseg

    path = Path(mmseg.__file__).parent / ".mim" / "tools" / "model_converters" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"_mmseg_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
