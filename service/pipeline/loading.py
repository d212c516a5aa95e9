"""Loading SpeechBrain models: where from, with what identity, and whether they are whole.

A model *source* is either a local directory in SpeechBrain's pretrained layout
(``hyperparams.yaml`` + ``*.ckpt`` + ``label_encoder.txt``) or a Hugging Face repo id.

* A local directory is loaded in place, strictly offline: its ``hyperparams.yaml`` usually names
  the hub repo it came from (``pretrained_path: speechbrain/...``); that key is overridden to the
  directory itself, so nothing is ever fetched from the network and nothing is written anywhere.
* A repo id is looked up in ``<cache_dir>/huggingface`` first (offline); only when it is not
  cached there is the hub asked once (a single short request, no retries) whether it is
  reachable, and then the files are downloaded into that cache. Restarts therefore never need
  the network once a model has been downloaded, and an unreachable hub fails in well under a
  second instead of huggingface_hub's ~20 s of retries.

A model's *identity* is ``<name>@sha256:<first 16 hex of sha256(embedding_model.ckpt)>``, where
``<name>`` is the repo id (for a local directory: the repo its ``pretrained_path`` names, else the
directory's name). It follows the weights, not the path: a moved or re-downloaded copy of the same
model keeps its identity, changed weights change it. A cached hub model is never silently
updated; delete its folder under ``<cache_dir>/huggingface`` to fetch a newer revision.

Checkpoint checks: SpeechBrain's Pretrainer loads checkpoints non-strictly and only logs keys
that did not fit; those log records are turned into a load error (a model whose checkpoint does
not fit its hyperparams would otherwise run with random weights), and a failed load of a local
directory names the checkpoint torch cannot read.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HPARAMS_FILE = "hyperparams.yaml"

#: Top-level packages every SpeechBrain model needs at load time (import order matters:
#: speechbrain imports torchaudio, which needs the matching torch).
MODEL_STACK_PACKAGES = ("torch", "torchaudio", "speechbrain")

#: Seconds the single "is the hub reachable?" request may take before a hub source is given up.
HUB_PROBE_TIMEOUT_S = 5.0

_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")
_PRETRAINED_PATH_KEY = re.compile(r"^pretrained_path\s*:\s*(?P<value>\S+)?", re.MULTILINE)


# Why a model failed to load, as a stable machine-readable class (shown by /health and
# `voicesearch doctor` beside the human message): the fix differs for each.
FAILURE_DEPENDENCY = "dependency"  # torch / torchaudio / speechbrain cannot be imported
FAILURE_FILES_MISSING = "files_missing"  # no such directory, repo or file
FAILURE_HUB_UNREACHABLE = "hub_unreachable"  # not cached, and the hub cannot be reached
FAILURE_BAD_CHECKPOINT = "bad_checkpoint"  # files present but corrupt or not fitting the model
FAILURE_DEVICE = "device"  # the configured device does not exist here
FAILURE_CONFIG = "config"  # the source setting itself is unusable
FAILURE_OTHER = "other"


class ModelLoadError(Exception):
    """A model could not be loaded; the message says why, for a human, and ``kind`` (one of the
    ``FAILURE_*`` values) says which kind of problem it is."""

    def __init__(self, message: str, kind: str = FAILURE_OTHER) -> None:
        super().__init__(message)
        self.kind = kind


def resolve_device(name: str) -> str:
    """``"auto"`` → ``"cuda"`` when CUDA is available, else ``"cpu"``; anything else as given."""
    cleaned = (name or "auto").strip().lower()
    if cleaned == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return cleaned


# --- loading -----------------------------------------------------------------------------------
def _file_sha256(path: Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def _looks_like_path(source: str) -> bool:
    return (
        source.startswith(("/", "./", "../", "~", "\\"))
        or source in (".", "..")
        or source.count("/") > 1
        or "\\" in source
        or bool(re.match(r"^[A-Za-z]:[\\/]", source))
    )


def _pretrained_path_in(hparams_text: str) -> str | None:
    """The value of the top-level ``pretrained_path`` key, or None when there is none."""
    match = _PRETRAINED_PATH_KEY.search(hparams_text)
    if match is None:
        return None
    return (match.group("value") or "").strip("'\"") or ""


@contextmanager
def _parameter_transfer_warnings_silenced() -> Iterator[None]:
    """SpeechBrain logs each mismatched key with the whole module's repr (hundreds of lines);
    ``_checkpoint_mismatches`` reports them once, briefly, as the load error instead."""
    target = logging.getLogger("speechbrain.utils.checkpoints")
    saved = target.level
    target.setLevel(logging.ERROR)
    try:
        yield
    finally:
        target.setLevel(saved)


def _checkpoint_mismatches(classifier: Any) -> list[str]:
    """Keys that differ between each loaded module's ``state_dict`` and its checkpoint file.

    SpeechBrain's Pretrainer loads checkpoints non-strictly and only *logs* missing or
    unexpected keys; a model whose checkpoint does not fit its hyperparams would then run with
    partly random weights. Comparing the keys directly (rather than parsing SpeechBrain's log
    text, which changes between releases) turns that into a load error. The checkpoint is
    memory-mapped, so only its key table is read, not the weights a second time. SpeechBrain's
    own key-renaming hooks are applied first, exactly as its loader does.
    """
    import torch
    from speechbrain.utils.checkpoints import (
        DEFAULT_TRANSFER_HOOKS,
        get_default_hook,
        hook_on_loading_state_dict_checkpoint,
        torch_parameter_transfer,
    )

    pretrainer = getattr(getattr(classifier, "hparams", None), "pretrainer", None)
    if pretrainer is None:
        return []
    problems: list[str] = []
    for name, module in pretrainer.loadables.items():
        path = pretrainer.paths.get(name)
        # Only modules SpeechBrain loads with its plain non-strict state_dict transfer; those
        # with their own hooks (e.g. InputNormalization's statistics) store another format.
        plain = get_default_hook(module, DEFAULT_TRANSFER_HOOKS) is torch_parameter_transfer
        if path is None or name in pretrainer.custom_hooks or not plain:
            continue
        saved = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
        saved_keys = set(hook_on_loading_state_dict_checkpoint(saved))
        expected_keys = set(module.state_dict())
        file_name = Path(str(path)).name
        problems += [f"{file_name}: missing {key}" for key in sorted(expected_keys - saved_keys)]
        problems += [f"{file_name}: unexpected {key}" for key in sorted(saved_keys - expected_keys)]
    return problems


def _hub_failure(source: str, exc: BaseException) -> tuple[str, str]:
    """(message, kind) for a failed hub download or probe."""
    from huggingface_hub.utils import (
        EntryNotFoundError,
        GatedRepoError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
    )

    if isinstance(exc, OfflineModeIsEnabled):
        return (
            f"'{source}' is not in the model cache and Hugging Face hub access is disabled "
            "(HF_HUB_OFFLINE); use a local model directory or download it first",
            FAILURE_HUB_UNREACHABLE,
        )
    if isinstance(exc, GatedRepoError):
        return (
            f"Hugging Face repo '{source}' is gated: log in / accept its terms first ({exc})",
            FAILURE_FILES_MISSING,
        )
    if isinstance(exc, RepositoryNotFoundError):
        return (
            f"'{source}' is not a local directory, and no Hugging Face repo of that name exists "
            "(or it is private)",
            FAILURE_FILES_MISSING,
        )
    if isinstance(exc, EntryNotFoundError):
        return (
            f"Hugging Face repo '{source}' lacks a file a SpeechBrain model needs "
            f"({type(exc).__name__}: {_short(exc, 150)})",
            FAILURE_FILES_MISSING,
        )
    return (
        f"'{source}' is neither a local directory nor cached, and the Hugging Face hub could "
        f"not be reached to download it ({type(exc).__name__}: {_short(exc)})",
        FAILURE_HUB_UNREACHABLE,
    )


def _probe_hub(source: str) -> None:
    """One short request, no retries: is ``source`` downloadable from the hub right now?"""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    try:
        get_hf_file_metadata(hf_hub_url(source, HPARAMS_FILE), timeout=HUB_PROBE_TIMEOUT_S)
    except Exception as exc:
        raise ModelLoadError(*_hub_failure(source, exc)) from exc


def _short(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass
class LoadedClassifier:
    classifier: Any
    identity: str


def load_classifier(source: str, *, cache_dir: Path, device: str) -> LoadedClassifier:
    """Load one ``EncoderClassifier`` from a local directory or a hub repo id."""
    from speechbrain.utils.fetching import FetchConfig

    source = source.strip()
    if not source:
        raise ModelLoadError("no model source configured", FAILURE_CONFIG)
    if source.startswith(("http://", "https://")):
        raise ModelLoadError(
            f"'{source}': URLs are not supported; give a Hugging Face repo id or a local directory",
            FAILURE_CONFIG,
        )

    local_dir = Path(source).expanduser()
    if local_dir.is_dir():
        hparams_path = local_dir / HPARAMS_FILE
        if not hparams_path.is_file():
            raise ModelLoadError(
                f"'{local_dir}' has no {HPARAMS_FILE}: not a SpeechBrain model",
                FAILURE_FILES_MISSING,
            )
        directory = str(local_dir.resolve())
        overrides = {}
        if _pretrained_path_in(hparams_path.read_text(encoding="utf-8")) is not None:
            overrides["pretrained_path"] = directory
        try:
            classifier = _from_hparams(
                directory, overrides, device, FetchConfig(allow_network=False)
            )
        except ModelLoadError:
            raise
        except Exception as exc:
            corrupt = _unreadable_checkpoint(Path(directory))
            if corrupt is None:
                raise
            raise ModelLoadError(
                f"{corrupt} in '{directory}' is corrupt or truncated "
                f"({type(exc).__name__}: {_short(exc, 100)})",
                FAILURE_BAD_CHECKPOINT,
            ) from exc
        return LoadedClassifier(classifier, _identity(classifier, _label_for_local(directory)))

    if local_dir.exists():
        raise ModelLoadError(f"'{source}' is a file, not a model directory", FAILURE_CONFIG)
    if _looks_like_path(source) or not _REPO_ID.match(source):
        raise ModelLoadError(f"model directory '{source}' does not exist", FAILURE_FILES_MISSING)

    # A hub repo id: the local cache first, the network only when it is not cached there.
    from huggingface_hub.utils import LocalEntryNotFoundError

    hf_cache = str(Path(cache_dir).expanduser() / "huggingface")
    try:
        classifier = _from_hub(source, device, hf_cache, allow_network=False)
    except LocalEntryNotFoundError:
        _probe_hub(source)
        try:
            classifier = _from_hub(source, device, hf_cache, allow_network=True)
        except ModelLoadError:
            raise
        except Exception as exc:
            if type(exc).__module__.startswith(("huggingface_hub", "httpx", "requests")):
                raise ModelLoadError(*_hub_failure(source, exc)) from exc
            raise
    return LoadedClassifier(classifier, _identity(classifier, source))


def _unreadable_checkpoint(directory: Path) -> str | None:
    """After a failed load: the name of the first ``*.ckpt`` torch cannot read, if any."""
    import torch

    for path in sorted(directory.glob("*.ckpt")):
        try:
            torch.load(path, map_location="cpu", weights_only=True)
        except Exception:
            return path.name
    return None


def _from_hub(source: str, device: str, hf_cache: str, *, allow_network: bool) -> Any:
    from huggingface_hub import hf_hub_download
    from speechbrain.utils.fetching import FetchConfig

    hparams_path = hf_hub_download(
        source, HPARAMS_FILE, cache_dir=hf_cache, local_files_only=not allow_network
    )
    overrides = {}
    if _pretrained_path_in(Path(hparams_path).read_text(encoding="utf-8")) is not None:
        overrides["pretrained_path"] = source
    config = FetchConfig(allow_network=allow_network, huggingface_cache_dir=hf_cache)
    return _from_hparams(source, overrides, device, config)


def _from_hparams(source: str, overrides: dict[str, str], device: str, config: Any) -> Any:
    from speechbrain.inference.classifiers import EncoderClassifier

    with _parameter_transfer_warnings_silenced():
        classifier = EncoderClassifier.from_hparams(
            source=source,
            savedir=None,  # load files where they are: no symlink farm to race over
            overrides=overrides,
            run_opts={"device": device},
            fetch_config=config,
        )
    problems = _checkpoint_mismatches(classifier)
    if problems:
        more = f" and {len(problems) - 3} more" if len(problems) > 3 else ""
        raise ModelLoadError(
            "checkpoint does not match hyperparams.yaml (" + ", ".join(problems[:3]) + more + ")",
            FAILURE_BAD_CHECKPOINT,
        )
    classifier.eval()
    return classifier


def _label_for_local(directory: str) -> str:
    """A local copy of a hub model is named after the repo its hyperparams name, so moving the
    directory does not change the model's identity (the weights' hash decides)."""
    hparams_text = (Path(directory) / HPARAMS_FILE).read_text(encoding="utf-8")
    named = _pretrained_path_in(hparams_text)
    if named and _REPO_ID.match(named) and not _looks_like_path(named) and named.count("/") == 1:
        return named
    return Path(directory).name


def _identity(classifier: Any, label: str) -> str:
    """``<label>@sha256:<16 hex>`` of the embedding model's checkpoint actually loaded."""
    paths: Mapping[str, Any] = getattr(classifier.hparams.pretrainer, "paths", {}) or {}
    if "embedding_model" in paths:
        digest = _file_sha256(Path(paths["embedding_model"]))
    else:  # unusual layout: hash every checkpoint, in a stable order
        combined = hashlib.sha256()
        for name in sorted(paths):
            path = Path(paths[name])
            if path.is_file():
                combined.update(name.encode() + b"\0" + _file_sha256(path).encode())
        digest = combined.hexdigest()
    return f"{label}@sha256:{digest[:16]}"


def find_device_problem(device: str) -> str | None:
    """Why ``device`` cannot be used, or None. Checked once, so every model says the same."""
    if not device.startswith("cuda"):
        return None
    import torch

    if not torch.cuda.is_available():
        return f"device {device!r} was requested but CUDA is not available here"
    _, _, index = device.partition(":")
    if index and (not index.isdigit() or int(index) >= torch.cuda.device_count()):
        return f"device {device!r} does not exist ({torch.cuda.device_count()} CUDA device(s))"
    return None


def describe_failure(exc: BaseException) -> tuple[str, str]:
    """(one-line human explanation, kind) of an unexpected loading failure."""
    if isinstance(exc, ModelLoadError):
        return str(exc), exc.kind
    if isinstance(exc, FileNotFoundError) and getattr(exc, "filename", None):
        return f"missing file {exc.filename}", FAILURE_FILES_MISSING
    text = f"{type(exc).__name__}: {_short(exc)}"
    if isinstance(exc, OSError) and ".so" in str(exc):
        return text, FAILURE_DEPENDENCY  # a native library that does not load
    if isinstance(exc, ImportError):
        # hyperparams.yaml naming a class that does not exist is the model's fault; a package
        # of the model stack that cannot be imported is the installation's.
        package = (exc.name or "").split(".")[0]
        if package in MODEL_STACK_PACKAGES:
            return text, FAILURE_DEPENDENCY
        return text, FAILURE_BAD_CHECKPOINT
    return text, FAILURE_OTHER
