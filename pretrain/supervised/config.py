"""Schema of the supervised recipes (DeiT III at cluster scale, single-GPU CIFAR-scale recipes).

One schema serves both launchers; each family has its own recipe default YAML (``configs/deit3/deit3_default.yaml``,
``configs/cifar/cifar_default.yaml``) and named configs beside it. Load order: schema <- recipe default <-
``--config-file`` <- ``key=value`` overrides; unknown keys fail with "did you mean". Derived values (the absolute
learning rate) are computed in :func:`derive` only.

Batch sizes are PER PROCESS (``data.batch_size_per_gpu``); the global batch is that times the world size.
``optim.scaling_rule: none`` means ``optim.base_lr`` is the absolute lr (DeiT III's ``--unscale-lr``).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from omegaconf import DictConfig, OmegaConf

from ..config import ConfigError, load_config, scaled_lr, world_size_hint

_CONFIGS = os.path.join(os.path.dirname(__file__), "..", "..", "configs")
DEFAULT_YAML = {"deit3": os.path.normpath(os.path.join(_CONFIGS, "deit3", "deit3_default.yaml")),
                "cifar": os.path.normpath(os.path.join(_CONFIGS, "cifar", "cifar_default.yaml"))}


@dataclass
class ModelCfg:
    arch: str = "vit_small"            # any registered encoder (pretrain.models.list_encoders())
    kwargs: Dict[str, Any] = field(default_factory=dict)   # constructor keywords (drop_path_rate, layerscale, ...)
    img_size: int = 0                  # passed as img_size= to the constructor when > 0 (ViT pos-embed grid)
    finetune_from: str = ""            # weights to start from: *.safetensors (e.g. best_model[_ema].safetensors of a
    #                                    run), a .pth state dict or a checkpoint dir; the ViT pos-embed is resized
    finetune_reset_head: bool = False  # re-initialise the classifier (always done when the class count differs)


@dataclass
class DataCfg:
    train_dataset: str = "digits:split=train"
    val_dataset: str = ""              # empty: hold out data.val_fraction of the train set (eval transforms)
    val_fraction: float = 0.1
    split_seed: int = 7
    test_dataset: str = ""             # reported separately (never used for selection)
    num_classes: int = 0               # 0: from the train dataset
    img_size: int = 224                # train resolution
    eval_img_size: int = 0             # 0: = img_size
    eval_crop_ratio: float = 1.0       # eval: Resize(size / ratio) -> CenterCrop(size)
    mean: List[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: List[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])
    batch_size_per_gpu: int = 64
    eval_batch_size_per_gpu: int = 0   # 0: 1.5 x batch_size_per_gpu (as DeiT)
    num_workers: int = 8
    repeated_aug: bool = False         # repeated-augmentation sampler
    repeats: int = 3
    ra_truncate: bool = True           # keep ~len(dataset) samples per epoch (DeiT) instead of len * repeats


@dataclass
class AugmentCfg:
    crop: str = "rrc"                  # rrc | src (resize + reflect-pad crop) | pad_crop (zero pad) | resize
    rrc_scale: List[float] = field(default_factory=lambda: [0.08, 1.0])
    pad: int = 0                       # padding of src/pad_crop; 0 = max(4, img_size // 8)
    hflip: bool = True
    three_augment: bool = False        # exactly one of grayscale / solarize / blur
    color_jitter: float = 0.0
    randaugment_n: int = 0
    randaugment_m: int = 9
    random_erasing: float = 0.0
    random_erasing_scale: List[float] = field(default_factory=lambda: [0.02, 0.33])
    interpolation: str = "bicubic"


@dataclass
class MixupCfg:
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    prob: float = 1.0                  # probability that a batch is mixed
    switch_prob: float = 0.5           # P(cutmix) when both alphas > 0


@dataclass
class LossCfg:
    name: str = "ce"                   # ce | bce
    label_smoothing: float = 0.0       # applied per source before mixing (ce); after binarising (bce)
    bce_threshold: float = 0.0         # bce: a class is positive when its mixed target mass > threshold


@dataclass
class OptimCfg:
    name: str = "adamw"                # adamw | lamb | sgd
    epochs: int = 100
    base_lr: float = 5.0e-4
    scaling_rule: str = "none"         # none (absolute lr) | linear_wrt_256 | linear_wrt_512 | sqrt_wrt_1024
    lr: float = 0.0                    # derived
    weight_decay: float = 0.05
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1.0e-8
    momentum: float = 0.9              # sgd only
    schedule: str = "cosine"           # cosine | onecycle (ConvMixer piecewise linear) | constant
    warmup_epochs: float = 5.0         # cosine: linear warm-up from warmup_lr (fractional epochs allowed)
    warmup_lr: float = 1.0e-6
    min_lr: float = 1.0e-5
    clip_grad: float = 0.0             # global grad-norm clipping; 0 = off
    no_wd_1d: bool = True              # no weight decay on biases / norms / gammas / pos-embed / tokens


@dataclass
class EmaCfg:
    enabled: bool = True
    decay: float = 0.99996
    warmup: bool = True                # effective decay min(decay, (1 + n) / (10 + n)) at update n
    update_every: int = 1


@dataclass
class TrainCfg:
    output_dir: str = "./output"
    seed: int = 0
    amp: str = "auto"                  # auto (bf16 on CUDA if supported, else fp16) | bf16 | fp16 | off; CPU: off
    eval_period_epochs: int = 1
    select_on: str = "max"             # best checkpoint: raw | ema | max (the better of both) val top-1
    print_freq: int = 50
    max_iters_per_epoch: int = 0       # > 0: cap (smoke tests, quick recipes)
    checkpoint_period_epochs: int = 1
    max_to_keep: int = 2
    resume: bool = True
    tensorboard: bool = False
    compile: bool = False
    channels_last: bool = False
    eval_robustness: bool = False      # after training, corruption robustness on the test (else val) split
    robustness_corruptions: List[str] = field(default_factory=lambda: [
        "gaussian_noise", "motion_blur", "jpeg", "fog", "contrast", "pixelate"])
    robustness_severities: List[int] = field(default_factory=lambda: [1, 2, 3, 4, 5])
    device: str = "auto"               # auto | cuda | cpu
    num_threads: int = 0               # > 0: torch.set_num_threads (CPU runs of tiny models are faster with 1)


@dataclass
class DistributedCfg:
    strategy: str = "ddp"              # ddp | none (one process)
    backend: str = "auto"
    find_unused_parameters: bool = False  # DDP: needed only for encoders with parameters unused by forward


@dataclass
class SupervisedConfig:
    recipe: str = "deit3"              # deit3 | cifar (documentation; the launcher decides)
    model: ModelCfg = field(default_factory=ModelCfg)
    data: DataCfg = field(default_factory=DataCfg)
    augment: AugmentCfg = field(default_factory=AugmentCfg)
    mixup: MixupCfg = field(default_factory=MixupCfg)
    loss: LossCfg = field(default_factory=LossCfg)
    optim: OptimCfg = field(default_factory=OptimCfg)
    ema: EmaCfg = field(default_factory=EmaCfg)
    train: TrainCfg = field(default_factory=TrainCfg)
    distributed: DistributedCfg = field(default_factory=DistributedCfg)


def _one_of(value, options, key):
    if value not in options:
        raise ConfigError(f"{key}={value!r} must be one of {list(options)}")


def validate(cfg: DictConfig) -> None:
    _one_of(cfg.augment.crop, ("rrc", "src", "pad_crop", "resize"), "augment.crop")
    _one_of(cfg.loss.name, ("ce", "bce"), "loss.name")
    _one_of(cfg.optim.name, ("adamw", "lamb", "sgd"), "optim.name")
    _one_of(cfg.optim.schedule, ("cosine", "onecycle", "constant"), "optim.schedule")
    _one_of(cfg.train.amp, ("auto", "bf16", "fp16", "off"), "train.amp")
    _one_of(cfg.train.select_on, ("raw", "ema", "max"), "train.select_on")
    _one_of(cfg.train.device, ("auto", "cuda", "cpu"), "train.device")
    _one_of(cfg.distributed.strategy, ("ddp", "none"), "distributed.strategy")
    if cfg.train.select_on == "ema" and not cfg.ema.enabled:
        raise ConfigError("train.select_on=ema needs ema.enabled=true")
    if not 0.0 <= cfg.loss.label_smoothing < 1.0:
        raise ConfigError(f"loss.label_smoothing={cfg.loss.label_smoothing} must be in [0, 1)")
    if cfg.data.batch_size_per_gpu < 1:
        raise ConfigError("data.batch_size_per_gpu must be >= 1")
    mixing = cfg.mixup.prob > 0 and (cfg.mixup.mixup_alpha > 0 or cfg.mixup.cutmix_alpha > 0)
    if mixing and cfg.data.batch_size_per_gpu % 2:
        raise ConfigError(f"data.batch_size_per_gpu={cfg.data.batch_size_per_gpu} must be even with mixup/cutmix "
                          "(samples are paired with the reversed batch)")
    if not 0.0 < cfg.data.val_fraction < 1.0 and not cfg.data.val_dataset:
        raise ConfigError("data.val_fraction must be in (0, 1) when data.val_dataset is empty")
    if len(cfg.data.mean) != 3 or len(cfg.data.std) != 3:
        raise ConfigError("data.mean and data.std need 3 values (RGB)")
    if cfg.optim.epochs < 1:
        raise ConfigError("optim.epochs must be >= 1")
    if cfg.optim.warmup_epochs < 0 or (cfg.optim.schedule == "cosine" and cfg.optim.warmup_epochs > cfg.optim.epochs):
        raise ConfigError(f"optim.warmup_epochs={cfg.optim.warmup_epochs} must be in [0, optim.epochs]")
    if cfg.data.repeated_aug and cfg.data.repeats < 1:
        raise ConfigError("data.repeats must be >= 1")
    if cfg.ema.enabled and not 0.0 <= cfg.ema.decay <= 1.0:
        raise ConfigError(f"ema.decay={cfg.ema.decay} must be in [0, 1]")
    for k in ("img_size", "eval_img_size"):
        v = cfg.data[k]
        if v < 0 or (k == "img_size" and v == 0):
            raise ConfigError(f"data.{k}={v} must be > 0")
    if cfg.model.finetune_from and not os.path.exists(cfg.model.finetune_from):
        raise ConfigError(f"model.finetune_from={cfg.model.finetune_from!r} does not exist")


def derive(cfg: DictConfig, world_size: int | None = None) -> None:
    """Every derived value, here and nowhere else."""
    world = world_size or world_size_hint()
    cfg.optim.lr = scaled_lr(cfg.optim.scaling_rule, cfg.optim.base_lr, cfg.data.batch_size_per_gpu * world)
    validate(cfg)


def load_supervised_config(recipe: str | None, config_file: str | None = None, overrides=(),
                           world_size: int | None = None) -> DictConfig:
    """Load a config of ``recipe`` (``deit3`` | ``cifar`` | None = no recipe default, e.g. a saved config.yaml)."""
    if recipe is not None and recipe not in DEFAULT_YAML:
        raise ConfigError(f"recipe {recipe!r} must be one of {sorted(DEFAULT_YAML)}")
    return load_config(SupervisedConfig, DEFAULT_YAML.get(recipe) if recipe else None, config_file, overrides,
                       derive=lambda c: derive(c, world_size))


def model_kwargs(cfg: DictConfig, num_classes: int | None = None) -> dict:
    """Constructor keywords of ``cfg.model.arch``: ``model.kwargs`` + ``img_size`` + ``num_classes``."""
    kw = OmegaConf.to_container(cfg.model.kwargs, resolve=True) if cfg.model.kwargs else {}
    if cfg.model.img_size > 0:
        kw["img_size"] = int(cfg.model.img_size)
    n = num_classes if num_classes is not None else cfg.data.num_classes
    if n:
        kw["num_classes"] = int(n)
    return kw
