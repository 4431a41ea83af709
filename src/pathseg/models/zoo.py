"""Models by name: where each comes from, whether it is usable offline, and how to build it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pathseg.errors import PathsegError
from pathseg.models.base import NucleusModel


@dataclass(frozen=True)
class ModelEntry:
    """One named model.

    ``source`` says where it comes from (``built-in``, ``bundled``, or a download address); ``offline`` reports
    whether it can be used now without a network; ``build`` makes it.
    """

    name: str
    task: str
    description: str
    source: str
    mpp: float
    build: Callable[[], object]
    offline: Callable[[], bool] = lambda: True


def _classical() -> NucleusModel:
    from pathseg.models.classical import ClassicalModel

    return ClassicalModel()


_REGISTRY: dict[str, ModelEntry] = {}


def register(entry: ModelEntry) -> None:
    """Add a model to the zoo (later entries with the same name replace earlier ones)."""
    _REGISTRY[entry.name] = entry


register(
    ModelEntry(
        name="classical",
        task="nuclei",
        description="weight-free: haematoxylin threshold + distance-transform watershed (parameters in µm)",
        source="built-in",
        mpp=0.25,
        build=_classical,
    )
)

#: Nucleus models in order of preference for "the best model available offline".
NUCLEUS_PREFERENCE = ("classical",)


def list_models(task: str | None = None) -> list[ModelEntry]:
    """All registered models, optionally only those of ``task`` (``"nuclei"``, ``"tissue"``)."""
    return [e for e in _REGISTRY.values() if task is None or e.task == task]


def get_entry(name: str) -> ModelEntry:
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY))
        raise PathsegError(f"unknown model {name!r}; available: {known} (see `pathseg models list`)") from None


def get_nucleus_model(name: str | None = None) -> NucleusModel:
    """Build the nucleus model ``name``; ``None`` picks the best one usable offline."""
    if name is None:
        name = default_nucleus_model()
    entry = get_entry(name)
    if entry.task != "nuclei":
        raise PathsegError(f"model {name!r} segments {entry.task}, not nuclei")
    return entry.build()  # type: ignore[return-value]


def default_nucleus_model() -> str:
    """Name of the most accurate nucleus model usable offline."""
    for name in NUCLEUS_PREFERENCE:
        if name in _REGISTRY and _REGISTRY[name].offline():
            return name
    return "classical"
