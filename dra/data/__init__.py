"""Datasets as memory-mapped stores, their converters, DM-AT's batch sampler and its batch augmentation
(`dra.data.augment`).

Converters (cifar, synthetic, imagenet, digits) import their heavier dependencies
themselves; importing this package only brings in the store API.
"""

from dra.data.store import (
    FeatureStore,
    FeatureStoreWriter,
    ImageStore,
    ImageStoreWriter,
    StoreError,
    open_feature_store,
    open_image_store,
)

__all__ = [
    "FeatureStore",
    "FeatureStoreWriter",
    "ImageStore",
    "ImageStoreWriter",
    "StoreError",
    "open_feature_store",
    "open_image_store",
]
