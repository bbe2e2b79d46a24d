"""The recipes shipped with the product (recipes/catalog/*.toml), loaded into the database."""

import tomllib
from pathlib import Path

from recipes.models import Recipe, normalize_parameters

CATALOG = Path(__file__).resolve().parent / "catalog"


def load_catalog() -> list[str]:
    """Add the shipped recipes that are not there yet (an admin's edits are never overwritten).
    Returns the slugs added."""
    added = []
    for path in sorted(CATALOG.glob("*.toml")):
        data = tomllib.loads(path.read_text())
        _recipe, created = Recipe.objects.get_or_create(slug=path.stem, defaults={
            "name": data["name"], "description": data.get("description", ""),
            "os_families": list(data["os_families"]),
            "parameters": normalize_parameters(data.get("parameters", [])), "script": data["script"]})
        if created:
            added.append(path.stem)
    return added
