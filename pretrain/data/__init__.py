"""octo data layer: string-addressed datasets, corrupt-image tolerance, DINOv2 multi-crop + masking, samplers,
loaders and eval transforms."""
from .augmentations import (AS_TRAINED_BLUR, IMAGENET_MEAN, IMAGENET_STD, DataAugmentationDINO,
                            reference_pil_pipeline)
from .collate import collate_data_and_cast
from .datasets import (ArrayImageDataset, ImageFileDataset, TransformedSubset, build_dataset, drop_target,
                       list_datasets, parse_dataset_spec, register_dataset, split_dataset)
from .loaders import SkipAwareLoader, make_data_loader, seed_worker
from .masking import MaskingGenerator
from .robust import ImageDecodeError, SafeImageDataset, SkippedImage, SkipTracker, TooManySkippedImagesError
from .samplers import DistributedEvalSampler, EpochSampler, ShardedInfiniteSampler, global_position
from .transforms import make_classification_train_transform, make_eval_transform

__all__ = [
    "AS_TRAINED_BLUR", "IMAGENET_MEAN", "IMAGENET_STD", "DataAugmentationDINO", "reference_pil_pipeline",
    "collate_data_and_cast", "ArrayImageDataset", "ImageFileDataset", "TransformedSubset", "build_dataset",
    "drop_target", "list_datasets", "parse_dataset_spec", "register_dataset", "split_dataset", "SkipAwareLoader",
    "make_data_loader", "seed_worker", "MaskingGenerator", "ImageDecodeError", "SafeImageDataset", "SkippedImage",
    "SkipTracker", "TooManySkippedImagesError", "DistributedEvalSampler", "EpochSampler", "ShardedInfiniteSampler",
    "global_position", "make_classification_train_transform", "make_eval_transform",
]
