"""Example photos bundled with scikit-image (nothing to download)."""

from __future__ import annotations

from pathlib import Path

EXAMPLES = {
    "chelsea": "chelsea.png",
    "astronaut": "astronaut.png",
    "coffee": "coffee.png",
    "rocket": "rocket.jpg",
    "motorcycle_left": "motorcycle_left.png",
}


def example_path(name: str) -> Path:
    """Path of a bundled example photo, e.g. ``example_path("chelsea")``."""
    import skimage.data

    if name not in EXAMPLES:
        raise KeyError(f"unknown example {name!r}; choose from {', '.join(EXAMPLES)}")
    return Path(skimage.data.__file__).parent / EXAMPLES[name]
