"""The config schema: every key a recipe may set, with its type and default.

Recipes (YAML under ``configs/``) and ``key=value`` overrides are merged onto these dataclasses,
so a misspelt key or a value of the wrong type is an error before anything runs. The ``model``
section is open: its keys are checked against the chosen model builder's arguments.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional


@dataclass
class DataConfig:
    name: str = "digits"  # digits | image_folder | coco | shapes | video_list | moving_shapes | ava | moving_actors
    root: Optional[str] = None  # image_folder: a folder holding train_split/ and val_split/;
    # coco: the folder the annotation and image paths below are relative to; shapes: where the
    # synthetic set is generated on first use
    train_split: str = "train"
    val_split: str = "val"
    image_size: int = 224  # side of the square crop fed to the model
    val_resize: Optional[int] = None  # shorter side before the centre crop (image_size / 0.875)
    crop_scale: List[float] = field(default_factory=lambda: [0.08, 1.0])  # random-resized crop area
    train_resize: Optional[int] = None  # set: resize to this square, then random-crop image_size (BiT)
    hflip: bool = True
    randaugment_magnitude: Optional[int] = None  # RandAugment (Cubuk et al., 2020); None: off
    randaugment_ops: int = 2
    random_erasing: float = 0.0  # probability (Zhong et al., 2020)
    mixup_alpha: float = 0.0  # Beta(alpha, alpha) mixing of image pairs (Zhang et al., 2018); 0: off
    cutmix_alpha: float = 0.0  # CutMix (Yun et al., 2019); 0: off; with both on, one is chosen per batch
    examples_per_class: Optional[int] = None  # few-shot: a fixed K training images per class
    mean: List[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: List[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])
    batch_size: int = 32  # per process
    num_workers: int = 2
    skip_bad: bool = False  # skip (and count) unreadable images instead of stopping
    max_train_samples: Optional[int] = None  # a fixed subset of the training set (nested across sizes)
    max_val_samples: Optional[int] = None
    # detection (coco, shapes)
    train_annotations: Optional[str] = None  # coco: COCO JSON of the training split
    train_images: Optional[str] = None  # coco: folder of the training images
    val_annotations: Optional[str] = None
    val_images: Optional[str] = None
    coco_examples: str = "images"  # classifying a coco/shapes set: images (label: largest object) | objects (crops)
    object_context: float = 1.5  # coco_examples=objects: crop side / the box's longer side
    synthetic_train: int = 600  # shapes, moving_shapes: images or clips generated per split
    synthetic_val: int = 100
    synthetic_seed: int = 0
    min_sizes: List[int] = field(default_factory=lambda: [800])  # shorter side, one drawn per image
    max_size: int = 1333  # longer side at most this
    test_min_size: int = 800
    lsj_size: Optional[int] = None  # set: large-scale jitter to this square (ViTDet) instead
    lsj_scale: List[float] = field(default_factory=lambda: [0.1, 2.0])
    size_divisibility: int = 32  # batches are padded to a multiple of this
    train_empty_images: bool = False  # train on images without annotations too
    # video (video_list, moving_shapes)
    train_list: Optional[str] = None  # video_list: "path label" or "path,label" lines, paths under root
    val_list: Optional[str] = None
    num_frames: int = 8  # frames per clip (T)
    frame_stride: int = 8  # frames between sampled frames (tau)
    short_side_range: List[int] = field(default_factory=lambda: [256, 320])  # training scale jitter
    test_short_side: int = 256
    test_clips: int = 10  # multi-view testing: clips x crops views, softmax scores averaged
    test_crops: int = 3
    # action detection (ava, moving_actors): AVA's files, paths under root
    frames: Optional[str] = None  # the folder frame-list paths are relative to (extracted JPEG frames)
    videos: Optional[str] = None  # set: read <video id>.mp4 (.mkv, .webm) here with PyAV instead of frames
    train_frame_list: Optional[str] = None  # PySlowFast frame lists
    val_frame_list: Optional[str] = None
    label_map: Optional[str] = None  # .pbtxt of the actions the model predicts
    eval_label_map: Optional[str] = None  # .pbtxt of the evaluated subset (AVA: 60 of 80); None: label_map
    val_exclusions: Optional[str] = None  # keyframes left out of evaluation
    train_proposals: Optional[str] = None  # person proposals with detector scores
    val_proposals: Optional[str] = None
    proposal_score_threshold: float = 0.8  # proposals scoring less are dropped
    train_proposal_iou: Optional[float] = None  # set (0.9): also train on proposals overlapping a box by more
    val_boxes: str = "proposals"  # proposals | groundtruth: the boxes scored in evaluation
    test_centre_crop: bool = False  # test on the centre square of the test-size frames (fixed-size models: MViT)
    fps: int = 30  # frames per second of the frames or videos
    first_second: int = 900  # the timestamp of frame 0 (AVA's frames start at 15:00)
    # pre-training
    knn_bank: Optional[int] = 10000  # labelled training images the k-NN monitor compares with


@dataclass
class OptimConfig:
    name: str = "sgd"  # sgd | adamw | lars
    lr: float = 0.1
    base_lr: Optional[float] = None  # set: lr = base_lr * global batch / 256 (Goyal et al., 2017)
    layer_decay: Optional[float] = None  # layer-wise lr decay (BEiT, MAE): lr * decay^(depth - layer)
    momentum: float = 0.9
    nesterov: bool = False
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    weight_decay: float = 1e-4
    decay_norm_and_bias: bool = False  # False: no weight decay on norm weights and biases
    adder_eta: Optional[float] = 0.2  # AdderNet's adaptive lr scaling of adder layers (eq. 13); None: off
    # the adder weights' own optimizer (e.g. sgd under adamw: the scaling above assumes SGD), peak lr
    # and weight decay; None: the same as the rest's
    adder_optimizer: Optional[str] = None
    adder_lr: Optional[float] = None
    adder_weight_decay: Optional[float] = None


@dataclass
class ScheduleConfig:
    name: str = "cosine"  # cosine | step | constant
    warmup_epochs: float = 0.0
    warmup_steps: Optional[int] = None  # set: overrides warmup_epochs
    warmup_factor: float = 0.001  # lr multiplier at step 0, rising linearly to 1
    milestones: List[float] = field(default_factory=list)  # step: epochs at which lr *= gamma
    milestone_steps: List[int] = field(default_factory=list)  # step: the same in optimizer steps
    gamma: float = 0.1
    min_lr_ratio: float = 0.0  # cosine: final lr as a fraction of the peak


@dataclass
class TrainConfig:
    epochs: int = 90
    steps: Optional[int] = None  # set: train this many optimizer steps instead of whole epochs
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: Optional[bool] = None  # None: on for CUDA, off on CPU
    amp_dtype: str = "bf16"  # bf16 | fp16 (fp16 only on CUDA, with loss scaling)
    clip_grad_norm: Optional[float] = None
    accumulate_steps: int = 1
    label_smoothing: float = 0.0
    ema_decay: Optional[float] = None  # keep and evaluate an exponential moving average of weights
    precise_bn_batches: int = 0  # before each evaluation, re-estimate BatchNorm statistics over this many
    # training batches at the current weights (precise BN, vislab.engine.precise_bn); 0: the running averages
    eval_every: int = 1  # epochs
    eval_images: int = 4  # validation images each evaluation draws (detections, MAE reconstructions); 0: none
    log_every: int = 20  # steps
    checkpoint_every: int = 1  # epochs
    checkpoint_every_steps: Optional[int] = None  # also save inside epochs after this many steps ...
    checkpoint_every_minutes: Optional[float] = None  # ... or minutes since the last checkpoint
    keep_last: int = 2  # checkpoints kept besides the best
    channels_last: bool = False
    activation_checkpointing: bool = False  # recompute each block's activations in backward: less memory, more time
    compile: bool = False  # torch.compile each block (eager, with a warning, where compiling fails)
    strategy: str = "ddp"  # ddp | fsdp: shard parameters, gradients and optimizer state block by block (FSDP2)
    checkpoint_format: str = "auto"  # full (one model.safetensors) | sharded (torch.distributed.checkpoint,
    # each process writes its shards) | auto: sharded under FSDP, full otherwise


@dataclass
class Config:
    task: str = "classification"
    recipe: Optional[str] = None  # the recipe's name (its file name unless set); names run dirs
    output_dir: Optional[str] = None  # default: runs/<recipe name>/<timestamp>
    resume: Any = False  # true: latest checkpoint of output_dir (or newest run); or a checkpoint path;
    # auto: output_dir's latest checkpoint if it holds one, else a fresh run there (a torchrun restart: auto)
    weights: Optional[str] = None  # initialise (train) or evaluate (eval) these model weights
    pretrained: Optional[str] = None  # initialise the backbone only (head left out): transfer learning
    bit_hyperrule: bool = False  # BiT-HyperRule: schedule, resolution and mixup from the data
    linear_probe: bool = False  # classification: frozen backbone, BatchNorm (no affine) + linear head
    model: Dict[str, Any] = field(default_factory=lambda: {"name": "resnet18"})
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    explicit_keys: List[str] = field(default_factory=list)  # set by recipes / command line (filled in)


CHOICES: dict[str, tuple[str, ...]] = {
    "task": ("classification", "detection", "pretrain", "video", "action_detection"),
    "data.name": ("digits", "image_folder", "coco", "shapes", "video_list", "moving_shapes", "ava", "moving_actors"),
    "data.val_boxes": ("proposals", "groundtruth"),
    "data.coco_examples": ("images", "objects"),
    "optim.name": ("sgd", "adamw", "lars"),
    "schedule.name": ("cosine", "step", "constant"),
    "train.amp_dtype": ("bf16", "fp16"),
    "train.strategy": ("ddp", "fsdp"),
    "train.checkpoint_format": ("auto", "full", "sharded"),
}
