"""Grouped options: flat keywords (``layers=4, lr=1e-3``) sorted into the small dataclasses a builder takes."""

from __future__ import annotations

from dataclasses import fields


def split_options(flat: dict, *kinds, owner: str = "") -> list:
    """Instances of the dataclasses ``kinds``, each given the keywords of ``flat`` that name one of its fields;
    a keyword no kind has is a TypeError that names it (and ``owner``, the builder)."""
    parts = [{} for _ in kinds]
    for key, value in flat.items():
        i = next((i for i, kind in enumerate(kinds) if key in {f.name for f in fields(kind)}), None)
        if i is None:
            raise TypeError(f"{owner + ' got an ' if owner else ''}unknown option {key!r}")
        parts[i][key] = value
    return [kind(**part) for kind, part in zip(kinds, parts, strict=True)]
