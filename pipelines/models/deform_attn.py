"""mmcv's ``MultiScaleDeformableAttention`` without host syncs, and bfloat16-safe.

Every deformable encoder layer of the pixel decoders (mmdet's ``MSDeformAttnPixelDecoder``, and
PRO-SCALE / ECO-M2F built on it) calls mmcv 2.1.0's ``MultiScaleDeformableAttention``. Two things
in its forward hurt on a GPU, and one fails:

* ``assert (spatial_shapes[:, 0] * spatial_shapes[:, 1]).sum() == num_value`` reads a device
  tensor back on the host: one sync per layer, also on the CUDA-kernel path;
* its PyTorch path (CPU, or a GPU without mmcv's kernel) iterates the ``spatial_shapes`` tensor
  (``H_ * W_`` per level): ten more scalar reads per layer at three levels;
* mmcv's CUDA kernel dispatches float32, float64 and float16 only, so under
  ``torch.autocast(dtype=torch.bfloat16)`` it fails ("not implemented for 'BFloat16'").

:class:`DeformAttn` computes exactly what mmcv's forward computes (same parameters, same state
dict, same ops) but takes the level sizes as Python ints when the caller tagged the
``spatial_shapes`` tensor with them (:func:`tag_shapes`; PRO-SCALE's ``stage_inputs`` does), or
reads them once (``tolist``: one sync per layer instead of eleven) otherwise; the size check is
done on those ints. Under bfloat16 the kernel's inputs are cast to float32 in an
autocast-disabled region and its output cast back (:func:`deform_sampling`).

:func:`install` points mmdet's deformable-DETR layers at :class:`DeformAttn` (it replaces the
name ``MultiScaleDeformableAttention`` in ``mmdet.models.layers.transformer.deformable_detr_layers``,
which builds the class directly, not through a registry), so every pixel decoder built after
``import pipelines.registry`` uses it, the plain baseline's too.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from mmcv.ops import multi_scale_deform_attn as msda
from mmcv.ops.multi_scale_deform_attn import MultiScaleDeformableAttention
from torch import Tensor

#: dtypes mmcv 2.1.0's deformable-attention CUDA kernel dispatches
KERNEL_DTYPES = (torch.float32, torch.float64, torch.float16)

HostShapes = Tuple[Tuple[int, int], ...]


def tag_shapes(spatial_shapes: Tensor, shapes: Sequence[Tuple[int, int]]) -> Tensor:
    """Attach the level sizes as Python ints to ``spatial_shapes`` (returned), so
    :class:`DeformAttn` never reads the tensor back."""
    spatial_shapes._host_shapes = tuple((int(h), int(w)) for h, w in shapes)
    return spatial_shapes


def host_shapes(spatial_shapes: Tensor) -> HostShapes:
    """The level sizes as ints: the tag of :func:`tag_shapes`, else one read of the tensor."""
    tagged = getattr(spatial_shapes, "_host_shapes", None)
    if tagged is not None:
        return tagged
    if torch.jit.is_tracing():  # the FLOPs trace: per-element reads, as mmcv's own code does
        return tuple((int(h), int(w)) for h, w in spatial_shapes)
    return tuple((int(h), int(w)) for h, w in spatial_shapes.tolist())


def sample_pytorch(value: Tensor, shapes: HostShapes, sampling_locations: Tensor,
                   attention_weights: Tensor) -> Tensor:
    """mmcv's ``multi_scale_deformable_attn_pytorch`` with the level sizes as ints: the same ops
    (``grid_sample`` per level, then the weighted sum), no scalar read of a tensor."""
    bs, _, num_heads, embed_dims = value.shape
    _, num_queries, num_heads, num_levels, num_points, _ = sampling_locations.shape
    value_list = value.split([h * w for h, w in shapes], dim=1)
    sampling_grids = 2 * sampling_locations - 1
    sampled = []
    for level, (h, w) in enumerate(shapes):
        value_l = value_list[level].flatten(2).transpose(1, 2).reshape(
            bs * num_heads, embed_dims, h, w)
        grid_l = sampling_grids[:, :, :, level].transpose(1, 2).flatten(0, 1)
        sampled.append(F.grid_sample(value_l, grid_l, mode='bilinear', padding_mode='zeros',
                                     align_corners=False))
    attention_weights = attention_weights.transpose(1, 2).reshape(
        bs * num_heads, 1, num_queries, num_levels * num_points)
    output = (torch.stack(sampled, dim=-2).flatten(-2) * attention_weights).sum(-1).view(
        bs, num_heads * embed_dims, num_queries)
    return output.transpose(1, 2).contiguous()


def kernel_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the CUDA kernel runs in for inputs of ``dtype`` (bfloat16 -> float32)."""
    return dtype if dtype in KERNEL_DTYPES else torch.float32


def deform_sampling(value: Tensor, spatial_shapes: Tensor, level_start_index: Tensor,
                    sampling_locations: Tensor, attention_weights: Tensor, im2col_step: int,
                    shapes: HostShapes, kernel: Optional[Callable] = None) -> Tensor:
    """The deformable sampling: ``kernel`` (mmcv's ``MultiScaleDeformableAttnFunction.apply``)
    when given, else :func:`sample_pytorch`.

    The kernel runs in :func:`kernel_dtype` of ``value``: a bfloat16 ``value`` (autocast) is
    cast, with the locations and weights, to float32 in an autocast-disabled region, and the
    output cast back to bfloat16. Other dtypes are passed as mmcv passes them.
    """
    if kernel is None:
        return sample_pytorch(value, shapes, sampling_locations, attention_weights)
    compute = kernel_dtype(value.dtype)
    if compute == value.dtype:
        return kernel(value, spatial_shapes, level_start_index, sampling_locations,
                      attention_weights, im2col_step)
    with torch.autocast(device_type=value.device.type, enabled=False):
        out = kernel(value.to(compute), spatial_shapes, level_start_index,
                     sampling_locations.to(compute), attention_weights.to(compute), im2col_step)
    return out.to(value.dtype)


def _kernel_for(value: Tensor) -> Optional[Callable]:
    if (msda.IS_CUDA_AVAILABLE and value.is_cuda) or (msda.IS_MLU_AVAILABLE and value.is_mlu):
        return msda.MultiScaleDeformableAttnFunction.apply
    return None


class DeformAttn(MultiScaleDeformableAttention):
    """mmcv's ``MultiScaleDeformableAttention`` (same parameters and math) without host syncs
    when ``spatial_shapes`` is tagged (:func:`tag_shapes`), and bfloat16-safe (module doc)."""

    def forward(self, query: Tensor, key: Optional[Tensor] = None,
                value: Optional[Tensor] = None, identity: Optional[Tensor] = None,
                query_pos: Optional[Tensor] = None, key_padding_mask: Optional[Tensor] = None,
                reference_points: Optional[Tensor] = None,
                spatial_shapes: Optional[Tensor] = None,
                level_start_index: Optional[Tensor] = None, **kwargs) -> Tensor:
        if value is None:
            value = query
        if identity is None:
            identity = query
        if query_pos is not None:
            query = query + query_pos
        if not self.batch_first:
            query = query.permute(1, 0, 2)
            value = value.permute(1, 0, 2)
        bs, num_query, _ = query.shape
        bs, num_value, _ = value.shape
        shapes = host_shapes(spatial_shapes)
        if sum(h * w for h, w in shapes) != num_value:
            raise AssertionError(f"spatial_shapes {shapes} cover "
                                 f"{sum(h * w for h, w in shapes)} values, not {num_value}")
        value = self.value_proj(value)
        if key_padding_mask is not None:
            value = value.masked_fill(key_padding_mask[..., None], 0.0)
        value = value.view(bs, num_value, self.num_heads, -1)
        sampling_offsets = self.sampling_offsets(query).view(
            bs, num_query, self.num_heads, self.num_levels, self.num_points, 2)
        attention_weights = self.attention_weights(query).view(
            bs, num_query, self.num_heads, self.num_levels * self.num_points)
        attention_weights = attention_weights.softmax(-1).view(
            bs, num_query, self.num_heads, self.num_levels, self.num_points)
        if reference_points.shape[-1] == 2:
            offset_normalizer = torch.stack([spatial_shapes[..., 1], spatial_shapes[..., 0]], -1)
            sampling_locations = reference_points[:, :, None, :, None, :] \
                + sampling_offsets / offset_normalizer[None, None, None, :, None, :]
        elif reference_points.shape[-1] == 4:
            sampling_locations = reference_points[:, :, None, :, None, :2] \
                + sampling_offsets / self.num_points \
                * reference_points[:, :, None, :, None, 2:] * 0.5
        else:
            raise ValueError(f'Last dim of reference_points must be 2 or 4, but get '
                             f'{reference_points.shape[-1]} instead.')
        output = deform_sampling(value, spatial_shapes, level_start_index, sampling_locations,
                                 attention_weights, self.im2col_step, shapes,
                                 _kernel_for(value))
        output = self.output_proj(output)
        if not self.batch_first:
            output = output.permute(1, 0, 2)
        return self.dropout(output) + identity


def install() -> None:
    """Make mmdet's deformable-DETR encoder / decoder layers build :class:`DeformAttn`."""
    from mmdet.models.layers.transformer import deformable_detr_layers

    deformable_detr_layers.MultiScaleDeformableAttention = DeformAttn
