"""What `mimkd list models|methods|datasets` shows (also as JSON for scripts)."""

from __future__ import annotations

import dataclasses


def _default(field: dataclasses.Field):
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return field.default


def listing(what: str) -> list[dict]:
    if what == "models":
        from mimkd.models import list_models

        rows = []
        for info in list_models(with_details=True):
            rows.append(
                {
                    "name": info.name,
                    "parameters": info.parameters,
                    "input": f"{1 if info.family == 'mnist' else 3}x{info.input_size}x{info.input_size}",
                    "last_map": info.taps["last_map"],
                    "penultimate": info.taps["penultimate"],
                    "stages": ",".join(info.taps["stages"]),
                    "description": info.description,
                }
            )
        rows.append(
            {
                "name": "tv:<name>",
                "parameters": None,
                "input": "3xHxW",
                "last_map": "discovered",
                "penultimate": "discovered",
                "stages": "discovered",
                "description": "any torchvision classification model (weights=... when online)",
            }
        )
        rows.append(
            {
                "name": "timm:<name>",
                "parameters": None,
                "input": "3xHxW",
                "last_map": "discovered",
                "penultimate": "discovered",
                "stages": "discovered",
                "description": 'any timm model (pip install "mimkd[timm]")',
            }
        )
        return rows
    if what == "methods":
        from mimkd.distillers import list_distillers

        return [
            {
                "name": info.name,
                "description": info.description,
                "paper": info.paper,
                "taps": info.taps,
                "parameters": {f.name: _default(f) for f in dataclasses.fields(info.config_class)},
            }
            for info in list_distillers()
        ]
    from mimkd.data import list_datasets

    return [
        {
            "name": entry.name,
            "num_classes": entry.info["num_classes"] or "from folders",
            "image_size": entry.info["image_size"],
            "description": entry.description,
        }
        for entry in list_datasets()
    ]
