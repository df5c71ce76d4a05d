"""Datasets as in-memory tensors, offline sources first."""

from toroid.data.batches import iterate_batches, random_crop_flip
from toroid.data.load import DATASET_SIZES, DATASETS, DatasetStatus, dataset_status, load
from toroid.data.subsets import balanced_indices
from toroid.data.tensordata import DataLike, Split, TensorData, as_tensor_data

__all__ = [
    "DATASETS",
    "DATASET_SIZES",
    "DataLike",
    "DatasetStatus",
    "Split",
    "TensorData",
    "as_tensor_data",
    "balanced_indices",
    "dataset_status",
    "iterate_batches",
    "load",
    "random_crop_flip",
]
