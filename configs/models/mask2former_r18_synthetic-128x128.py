# A tiny Mask2Former that trains on a 2-core CPU: ResNet-18 from random weights, the full
# 6-layer deformable pixel decoder of the R50 config (so every encoder variant plugs in
# unchanged), a shorter transformer decoder and fewer queries, on the synthetic set written by
# `python -m pipelines data synthetic --out data/synthetic`.
_base_ = ['mmseg::mask2former/mask2former_r50_8xb2-160k_ade20k-512x512.py']

custom_imports = dict(imports=['mmdet.models', 'pipelines.registry'], allow_failed_imports=False)

crop_size = (128, 128)
num_classes = 8  # pipelines.data.synthetic.CLASSES
data_root = 'data/synthetic'
max_iters = 300

data_preprocessor = dict(size=crop_size)  # mmseg.SegDataPreProcessor
model = dict(
    data_preprocessor=data_preprocessor,
    backbone=dict(  # mmseg.ResNet (ResNetV1c-free plain ResNet-18, no pretrained weights)
        depth=18,
        norm_cfg=dict(type='BN', requires_grad=True),
        init_cfg=None),
    decode_head=dict(  # mmseg.Mask2FormerHead
        in_channels=[64, 128, 256, 512],
        num_classes=num_classes,
        num_queries=20,
        transformer_decoder=dict(num_layers=3),  # mmdet.Mask2FormerTransformerDecoder
        loss_cls=dict(class_weight=[1.0] * num_classes + [0.1]),
        train_cfg=dict(num_points=128 * 128 // 4)))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=False),
    dict(type='RandomResize', scale=crop_size, ratio_range=(0.75, 1.5), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=crop_size, keep_ratio=True),
    dict(type='LoadAnnotations', reduce_zero_label=False),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(
    batch_size=2,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(  # pipelines.data.dataset.SyntheticShapesDataset
        type='SyntheticShapesDataset',
        data_root=data_root,
        data_prefix=dict(img_path='images/training', seg_map_path='annotations/training'),
        pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(
        type='SyntheticShapesDataset',
        data_root=data_root,
        data_prefix=dict(img_path='images/validation', seg_map_path='annotations/validation'),
        pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(type='PerClassIoUMetric', iou_metrics=['mIoU'])
test_evaluator = val_evaluator

# the backbone starts from random weights, so it learns at the full rate
optim_wrapper = dict(
    optimizer=dict(lr=4e-4),
    clip_grad=dict(max_norm=1.0),
    paramwise_cfg=dict(custom_keys=dict(backbone=dict(lr_mult=1.0, decay_mult=1.0))))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, begin=0, end=20, by_epoch=False),
    dict(type='PolyLR', eta_min=0, power=0.9, begin=20, end=max_iters, by_epoch=False),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters)
default_hooks = dict(
    logger=dict(interval=10),
    checkpoint=dict(interval=50, max_keep_ckpts=2, save_best=None),
    visualization=dict(draw=False))
randomness = dict(seed=0)
