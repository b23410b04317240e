"""Schema of the DINOv2 recipe config (keys follow DINOv2's ``ssl_default_config.yaml``, plus octo's own).

Reference YAMLs from DINOv2 / octic-vits load unchanged apart from keys octo dropped (none) or renamed (none);
unknown keys fail with a "did you mean" message. Derived values live in :func:`derive`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

from omegaconf import DictConfig

from ..config import ConfigError, load_config, scaled_lr, world_size_hint

DEFAULT_YAML = __import__("os").path.join(__import__("os").path.dirname(__file__), "..", "..", "configs",
                                          "ssl_default.yaml")


@dataclass
class ModelCfg:
    WEIGHTS: str = ""


@dataclass
class MixedPrecisionCfg:
    param_dtype: str = "fp32"
    reduce_dtype: str = "fp32"
    buffer_dtype: str = "fp32"


@dataclass
class ShardCfg:
    sharding_strategy: str = "SHARD_GRAD_OP"  # NO_SHARD | SHARD_GRAD_OP | FULL_SHARD
    mixed_precision: MixedPrecisionCfg = field(default_factory=MixedPrecisionCfg)


@dataclass
class ModuleShardsCfg:
    backbone: ShardCfg = field(default_factory=ShardCfg)
    dino_head: ShardCfg = field(default_factory=ShardCfg)
    ibot_head: ShardCfg = field(default_factory=ShardCfg)


@dataclass
class ComputePrecisionCfg:
    grad_scaler: bool = False
    teacher: ModuleShardsCfg = field(default_factory=ModuleShardsCfg)
    student: ModuleShardsCfg = field(default_factory=ModuleShardsCfg)


@dataclass
class DinoCfg:
    loss_weight: float = 1.0
    head_n_prototypes: int = 65536
    head_bottleneck_dim: int = 256
    head_nlayers: int = 3
    head_hidden_dim: int = 2048
    koleo_loss_weight: float = 0.1


@dataclass
class IbotCfg:
    loss_weight: float = 1.0
    mask_sample_probability: float = 0.5
    mask_ratio_min_max: List[float] = field(default_factory=lambda: [0.1, 0.5])
    separate_head: bool = False
    head_n_prototypes: int = 65536
    head_bottleneck_dim: int = 256
    head_nlayers: int = 3
    head_hidden_dim: int = 2048


@dataclass
class TrainCfg:
    batch_size_per_gpu: int = 64
    dataset_path: str = "ImageNet:split=TRAIN"
    output_dir: str = "."
    saveckp_freq: int = 20  # accepted for compatibility with DINOv2 YAMLs; see checkpointing.period_iterations
    seed: int = 0
    num_workers: int = 10
    OFFICIAL_EPOCH_LENGTH: int = 1250
    cache_dataset: bool = True  # accepted for compatibility; unused
    centering: str = "centering"  # centering | sinkhorn_knopp
    max_skipped_images: float = 0.01  # abort when more than this fraction (<1) or count (>=1) is unreadable
    compile: bool = False
    deterministic: bool = False
    # intra-op threads per training process; 0 = auto: on CPU, the cores left per process after the data workers
    # (oversubscribed OpenMP threads made small CPU models ~5x slower), PyTorch's default on GPU
    num_threads: int = 0
    # stop (after checkpointing) when this iteration is reached, exactly as on a preemption signal; -1 = never.
    # Used by tests and to split a run into chunks; rerunning the same command resumes.
    stop_at_iteration: int = -1


@dataclass
class StudentCfg:
    arch: str = "vit_large"
    patch_size: int = 16
    drop_path_rate: float = 0.3
    layerscale: float = 1.0e-5
    drop_path_uniform: bool = True
    pretrained_weights: str = ""
    ffn_layer: str = "mlp"
    block_chunks: int = 0  # accepted for compatibility; FSDP2 shards every block
    qkv_bias: bool = True
    proj_bias: bool = True
    ffn_bias: bool = True
    num_register_tokens: int = 0
    interpolate_antialias: bool = False
    interpolate_offset: float = 0.1
    attn_backend: str = "sdpa"  # sdpa | math | xformers | auto
    # extra constructor keywords for non-ViT encoders (e.g. {grid_size: ...}); merged last
    extra: dict = field(default_factory=dict)


@dataclass
class TeacherCfg:
    momentum_teacher: float = 0.992
    final_momentum_teacher: float = 1.0
    warmup_teacher_temp: float = 0.04
    teacher_temp: float = 0.07
    warmup_teacher_temp_epochs: int = 30


@dataclass
class OptimCfg:
    epochs: int = 100
    weight_decay: float = 0.04
    weight_decay_end: float = 0.4
    base_lr: float = 0.004
    lr: float = 0.0  # derived: base_lr scaled by scaling_rule with the global batch
    warmup_epochs: int = 10
    min_lr: float = 1.0e-6
    clip_grad: float = 3.0
    freeze_last_layer_epochs: int = 1
    scaling_rule: str = "sqrt_wrt_1024"
    patch_embed_lr_mult: float = 0.2
    layerwise_decay: float = 0.9
    adamw_beta1: float = 0.9
    adamw_beta2: float = 0.999


@dataclass
class CropsCfg:
    global_crops_scale: List[float] = field(default_factory=lambda: [0.32, 1.0])
    local_crops_number: int = 8
    local_crops_scale: List[float] = field(default_factory=lambda: [0.05, 0.32])
    global_crops_size: int = 224
    local_crops_size: int = 96
    # explicit augmentation probabilities (BYOL values); the reference code inverted the blur ones
    global1_blur_prob: float = 1.0
    global2_blur_prob: float = 0.1
    local_blur_prob: float = 0.5
    global2_solarize_prob: float = 0.2
    # "as_trained" sets the probabilities the released DINOv2 models were actually trained with (0.0/0.9/0.5)
    blur_preset: Optional[str] = None


@dataclass
class EvaluationCfg:
    eval_period_iterations: int = 12500  # export the teacher backbone every N iterations (0 = only at the end)
    # optional kNN of the final teacher on a labelled dataset (used by the quick-start)
    knn_train_dataset: str = ""
    knn_test_dataset: str = ""
    knn_ks: List[int] = field(default_factory=lambda: [10, 20])
    knn_resize: int = 0  # 0 = global_crops_size
    knn_compare_random_init: bool = False


@dataclass
class CheckpointingCfg:
    period_iterations: int = 3750
    max_to_keep: int = 3
    resume: bool = True


@dataclass
class LoggingCfg:
    print_freq: int = 10
    tensorboard: bool = True


@dataclass
class DistributedCfg:
    strategy: str = "fsdp"  # fsdp | ddp | none  (none only for one process)
    backend: str = "auto"   # auto (nccl on CUDA, gloo on CPU) | nccl | gloo


@dataclass
class SSLConfig:
    MODEL: ModelCfg = field(default_factory=ModelCfg)
    compute_precision: ComputePrecisionCfg = field(default_factory=ComputePrecisionCfg)
    dino: DinoCfg = field(default_factory=DinoCfg)
    ibot: IbotCfg = field(default_factory=IbotCfg)
    train: TrainCfg = field(default_factory=TrainCfg)
    student: StudentCfg = field(default_factory=StudentCfg)
    teacher: TeacherCfg = field(default_factory=TeacherCfg)
    optim: OptimCfg = field(default_factory=OptimCfg)
    crops: CropsCfg = field(default_factory=CropsCfg)
    evaluation: EvaluationCfg = field(default_factory=EvaluationCfg)
    checkpointing: CheckpointingCfg = field(default_factory=CheckpointingCfg)
    logging: LoggingCfg = field(default_factory=LoggingCfg)
    distributed: DistributedCfg = field(default_factory=DistributedCfg)


AS_TRAINED_BLUR = {"global1_blur_prob": 0.0, "global2_blur_prob": 0.9, "local_blur_prob": 0.5}
DTYPES = ("fp32", "fp16", "bf16")
SHARDING = ("NO_SHARD", "SHARD_GRAD_OP", "FULL_SHARD")


def derive(cfg: DictConfig, world_size: int | None = None) -> None:
    """Every derived value of the recipe, computed here and nowhere else."""
    world = world_size or world_size_hint()
    global_batch = cfg.train.batch_size_per_gpu * world
    cfg.optim.lr = scaled_lr(cfg.optim.scaling_rule, cfg.optim.base_lr, global_batch)
    if cfg.crops.blur_preset is not None:
        if cfg.crops.blur_preset != "as_trained":
            raise ConfigError(f"crops.blur_preset={cfg.crops.blur_preset!r}: only null or 'as_trained' exist")
        for k, v in AS_TRAINED_BLUR.items():
            cfg.crops[k] = v
    validate(cfg)


def validate(cfg: DictConfig) -> None:
    p = cfg.student.patch_size
    for key in ("global_crops_size", "local_crops_size"):
        size = cfg.crops[key]
        if size % p:
            raise ConfigError(f"crops.{key}={size} is not a multiple of student.patch_size={p}; "
                              f"use e.g. {size // p * p} or {(size // p + 1) * p}")
    if cfg.train.centering not in ("centering", "sinkhorn_knopp"):
        raise ConfigError(f"train.centering={cfg.train.centering!r} must be 'centering' or 'sinkhorn_knopp'")
    for who in ("student", "teacher"):
        for mod in ("backbone", "dino_head", "ibot_head"):
            sc = cfg.compute_precision[who][mod]
            if sc.sharding_strategy not in SHARDING:
                raise ConfigError(f"compute_precision.{who}.{mod}.sharding_strategy={sc.sharding_strategy!r} "
                                  f"is not one of {SHARDING}")
            for d in ("param_dtype", "reduce_dtype", "buffer_dtype"):
                if sc.mixed_precision[d] not in DTYPES:
                    raise ConfigError(f"compute_precision.{who}.{mod}.mixed_precision.{d}="
                                      f"{sc.mixed_precision[d]!r} is not one of {DTYPES}")
    if cfg.distributed.strategy not in ("fsdp", "ddp", "none"):
        raise ConfigError(f"distributed.strategy={cfg.distributed.strategy!r} must be fsdp, ddp or none")
    lo, hi = cfg.ibot.mask_ratio_min_max
    if not 0 <= lo <= hi <= 1:
        raise ConfigError(f"ibot.mask_ratio_min_max={[lo, hi]} must satisfy 0 <= min <= max <= 1")
    if cfg.crops.local_crops_number < 0:
        raise ConfigError("crops.local_crops_number must be >= 0")


def load_ssl_config(config_file: str | None = None, overrides=(), world_size: int | None = None) -> DictConfig:
    return load_config(SSLConfig, DEFAULT_YAML, config_file, overrides,
                       derive=lambda c: derive(c, world_size))
