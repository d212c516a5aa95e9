"""Can the packages the service runs on be imported here, and which versions are installed?

A broken install shows up as an import failure deep inside a model load (torchaudio built for
another torch fails with ``undefined symbol``, and speechbrain cannot be imported without it).
This module asks each package directly, so the model registry and ``voicesearch doctor`` can say
"torchaudio cannot be imported: …" instead of a misleading downstream error.

Importing is the only honest check (a package can be installed and still not load), and it is
done at most once per package per process: a package that imported stays imported.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
from dataclasses import dataclass

from service.pipeline.loading import MODEL_STACK_PACKAGES

#: (import name, distribution name) of what ``voicesearch doctor`` reports, model stack first.
#: ``silero_vad`` is only looked up, not imported: importing it sets torch to one thread for the
#: whole process (see service.pipeline.quality).
REPORTED_PACKAGES: tuple[tuple[str, str], ...] = (
    ("torch", "torch"),
    ("torchaudio", "torchaudio"),
    ("speechbrain", "speechbrain"),
    ("numpy", "numpy"),
    ("faiss", "faiss-cpu"),
    ("av", "av"),
    ("silero_vad", "silero-vad"),
    ("huggingface_hub", "huggingface_hub"),
    ("sqlalchemy", "sqlalchemy"),
    ("fastapi", "fastapi"),
)

_NOT_IMPORTED = frozenset({"silero_vad"})


@dataclass(frozen=True)
class Dependency:
    name: str  # import name
    distribution: str
    version: str | None  # installed version, None when not installed
    error: str | None  # why it cannot be imported, None when it imports

    @property
    def ok(self) -> bool:
        return self.error is None


def _short(text: str, limit: int = 240) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def inspect(name: str, distribution: str | None = None) -> Dependency:
    """Installed version of ``distribution`` and whether ``name`` imports."""
    distribution = distribution or name
    try:
        version: str | None = importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        version = None
    error = None
    try:
        if name in _NOT_IMPORTED:
            if importlib.util.find_spec(name) is None:
                error = f"{name} is not installed"
        else:
            importlib.import_module(name)
    except Exception as exc:  # OSError from a native library, ImportError, anything at import
        error = _short(f"{type(exc).__name__}: {exc}")
    if version is None and error is None:
        version = getattr(importlib.import_module(name), "__version__", None)
    return Dependency(name=name, distribution=distribution, version=version, error=error)


def model_stack_problem() -> str | None:
    """Why SpeechBrain models cannot be loaded in this process (a package of the model stack
    does not import), or None when torch, torchaudio and speechbrain all import."""
    for name in MODEL_STACK_PACKAGES:
        found = inspect(name)
        if not found.ok:
            installed = f" {found.version}" if found.version else ""
            return f"{name}{installed} cannot be imported: {found.error}"
    return None


def report() -> list[Dependency]:
    return [inspect(name, distribution) for name, distribution in REPORTED_PACKAGES]
