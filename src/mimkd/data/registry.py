"""The dataset registry (kept apart from __init__ so readers can import it without cycles)."""

from __future__ import annotations

from mimkd.registry import Registry

DATASETS = Registry("dataset", "mimkd list datasets")


def register_dataset(
    name: str, *, num_classes: int, image_size: int, description: str | None = None
):
    """Register `fn(root, download, **options) -> DatasetBundle` under `name`."""
    return DATASETS.register(
        name, num_classes=num_classes, image_size=image_size, description=description
    )
