"""SpeechBrain models, loaded once per process: speaker encoders (one per space) and language ID.

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

:meth:`ModelRegistry.load` never raises because one model is missing or broken: it records why
in :attr:`ModelRegistry.statuses` and goes on, so the service can start degraded and say why.

Inference (:meth:`SpeakerEncoder.embed`, :meth:`LanguageIdentifier.detect`) holds no lock: every
module is in eval mode and stateless at inference, gradients are off per call
(``torch.inference_mode`` is thread-local), so concurrent calls on the same or different models
are safe. The caller bounds how many run at once.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from service.core import errors

log = logging.getLogger(__name__)

#: The role of the language-ID model in ``Settings.model_sources``; every other role is a space.
LANGID_ROLE = "langid"

HPARAMS_FILE = "hyperparams.yaml"
SAMPLE_RATE = 16_000
#: Shortest input the ECAPA front end can take (its dilated convolutions need a few frames;
#: below ~40 ms they fail). 0.1 s leaves a margin; the audio layer usually asks for more.
MIN_SAMPLES = SAMPLE_RATE // 10

#: Seconds the single "is the hub reachable?" request may take before a hub source is given up.
HUB_PROBE_TIMEOUT_S = 5.0

_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")
_TRANSFER_PROBLEM = re.compile(
    r"loading from (?P<path>\S+), the (?:transferred parameters did not have parameters for "
    r"(?P<missing>)|object could not use the parameters loaded with )the key: (?P<key>\S+)"
)
_PRETRAINED_PATH_KEY = re.compile(r"^pretrained_path\s*:\s*(?P<value>\S+)?", re.MULTILINE)


# --- public value types ------------------------------------------------------------------------
@dataclass(frozen=True)
class LanguageCandidate:
    language: str  # ISO code from the label, e.g. "zh" (from "zh: Chinese")
    name: str  # "Chinese"
    confidence: float  # the model's posterior probability, 0..1


@dataclass(frozen=True)
class LanguageDetection:
    language: str
    name: str
    confidence: float
    candidates: list[LanguageCandidate]  # top-k, best first, includes the best


@dataclass(frozen=True)
class ModelStatus:
    role: str  # "langid", "voxceleb", "cnceleb"
    source: str
    loaded: bool
    identity: str | None
    error: str | None  # why it failed to load, human readable
    load_seconds: float | None


class ModelLoadError(Exception):
    """A model could not be loaded; the message says why, for a human."""


def resolve_device(name: str) -> str:
    """``"auto"`` → ``"cuda"`` when CUDA is available, else ``"cpu"``; anything else as given."""
    cleaned = (name or "auto").strip().lower()
    if cleaned == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return cleaned


def split_language_label(label: str) -> tuple[str, str]:
    """``"zh: Chinese"`` → ``("zh", "Chinese")``; a label without a colon is its own code."""
    code, sep, name = str(label).partition(":")
    code = code.strip()
    name = name.strip() if sep else code
    return code, name or code


# --- the models --------------------------------------------------------------------------------
def _as_waveform(samples: np.ndarray) -> Any:
    """float32 16 kHz mono 1-D numpy → a (1, n) float32 torch tensor (copied, never aliased)."""
    import torch

    array = np.asarray(samples)
    if array.ndim != 1:
        raise ValueError(f"expected 1-D mono samples, got shape {array.shape}")
    if array.size == 0:
        raise errors.EmptyAudio("the audio contains no samples")
    if array.size < MIN_SAMPLES:
        raise errors.AudioTooShort(
            f"the audio is {array.size / SAMPLE_RATE:.3f} s long; the models need at least "
            f"{MIN_SAMPLES / SAMPLE_RATE:g} s",
            details={"duration_s": array.size / SAMPLE_RATE},
        )
    array = np.array(array, dtype=np.float32, copy=True)
    if not np.isfinite(array).all():
        raise errors.InvalidInput("the audio contains NaN or infinite samples")
    return torch.from_numpy(array).unsqueeze(0)


class SpeakerEncoder:
    """One speaker-embedding model: audio → L2-normalised float32 vector of length :attr:`dim`."""

    def __init__(
        self, classifier: Any, *, space: str, source: str, identity: str, dim: int = 0
    ) -> None:
        self.classifier = classifier
        self.space = space
        self.source = source
        self.identity = identity
        self.dim = dim or int(self.embed(_warmup_signal()).shape[0])

    def embed(self, samples: np.ndarray) -> np.ndarray:
        """float32 16 kHz mono 1-D samples → float32 ``(dim,)`` with unit L2 norm."""
        import torch

        wavs = _as_waveform(samples)
        with torch.inference_mode():
            embedding = self.classifier.encode_batch(wavs)
        vector = embedding.detach().reshape(-1).to("cpu", torch.float32).numpy()
        vector = np.array(vector, dtype=np.float32, copy=True)
        norm = float(np.linalg.norm(vector))
        if not math.isfinite(norm) or norm == 0.0:
            raise RuntimeError(f"the {self.space} encoder produced a degenerate embedding")
        vector /= np.float32(norm)
        return vector

    def __repr__(self) -> str:
        return f"SpeakerEncoder(space={self.space!r}, identity={self.identity!r}, dim={self.dim})"


class LanguageIdentifier:
    """The spoken-language classifier (VoxLingua107 label set: ``"zh: Chinese"`` …)."""

    def __init__(self, classifier: Any, *, source: str, identity: str) -> None:
        self.classifier = classifier
        self.source = source
        self.identity = identity
        label_encoder = classifier.hparams.label_encoder
        ind2lab = dict(getattr(label_encoder, "ind2lab", {}) or {})
        if not ind2lab:
            raise ModelLoadError("label_encoder.txt is missing or empty (no language labels)")
        self._labels: dict[int, tuple[str, str]] = {
            int(index): split_language_label(label) for index, label in ind2lab.items()
        }
        # One probe inference (classify_batch's computation, without its label decoding): the
        # classifier's output size must match the label set before classify_batch is trusted.
        n_outputs = self._count_outputs()
        if n_outputs != len(self._labels) or set(self._labels) != set(range(n_outputs)):
            raise ModelLoadError(
                f"the classifier has {n_outputs} outputs but label_encoder.txt has "
                f"{len(self._labels)} labels"
            )
        if hasattr(label_encoder, "expect_len"):
            label_encoder.expect_len(n_outputs)  # also silences SpeechBrain's warning about it
        self._log_posteriors(_warmup_signal())
        self.languages: list[str] = [self._labels[i][0] for i in range(n_outputs)]

    def _count_outputs(self) -> int:
        import torch

        wavs = _as_waveform(_warmup_signal())
        with torch.inference_mode():
            scores = self.classifier.mods.classifier(self.classifier.encode_batch(wavs))
        return int(scores.shape[-1])

    def _log_posteriors(self, samples: np.ndarray) -> np.ndarray:
        import torch

        wavs = _as_waveform(samples)
        with torch.inference_mode():
            out_prob, _score, _index, _text = self.classifier.classify_batch(wavs)
        scores = out_prob.detach().reshape(-1).to("cpu", torch.float64).numpy()
        if not np.all(np.isfinite(scores)):
            raise RuntimeError("the language-ID model produced non-finite scores")
        # VoxLingua107's classifier ends in log-softmax, so this log-softmax changes nothing
        # there; a head that emits raw logits still yields proper posteriors.
        return scores - float(np.logaddexp.reduce(scores))

    def detect(self, samples: np.ndarray, top_k: int = 5) -> LanguageDetection:
        log_probs = self._log_posteriors(samples)
        probs = np.exp(log_probs)
        k = max(1, min(int(top_k), probs.shape[0]))
        # Stable sort on -p: ties keep label order, so the result is deterministic.
        order = np.argsort(-probs, kind="stable")[:k]
        candidates = []
        for index in order:
            code, name = self._labels[int(index)]
            confidence = min(1.0, max(0.0, float(probs[index])))
            candidates.append(LanguageCandidate(language=code, name=name, confidence=confidence))
        best = candidates[0]
        return LanguageDetection(
            language=best.language,
            name=best.name,
            confidence=best.confidence,
            candidates=candidates,
        )

    def __repr__(self) -> str:
        return f"LanguageIdentifier(identity={self.identity!r}, labels={len(self._labels)})"


def _warmup_signal() -> np.ndarray:
    """One second of quiet deterministic noise: enough for any ECAPA front end."""
    rng = np.random.default_rng(0)
    return (0.01 * rng.standard_normal(SAMPLE_RATE)).astype(np.float32)


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
def _failed_parameter_transfers() -> Iterator[list[str]]:
    """Collect SpeechBrain's warnings about checkpoint keys that did not match the model.

    SpeechBrain's Pretrainer loads checkpoints non-strictly and only *logs* missing or
    unexpected keys; a model whose checkpoint does not fit its hyperparams would then run with
    random weights. Those warnings are turned into a load error instead.
    """
    problems: list[str] = []

    class _Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            message = record.getMessage()
            if "During parameter transfer" not in message:
                return
            # SpeechBrain's message embeds the whole module's repr; keep what matters.
            match = _TRANSFER_PROBLEM.search(message)
            if match is None:
                problems.append(_short(Exception(message), 200))
            else:
                kind = "missing" if match.group("missing") is not None else "unexpected"
                name = Path(match.group("path")).name
                problems.append(f"{name}: {kind} {match.group('key')}")

    target = logging.getLogger("speechbrain.utils.checkpoints")
    handler = _Collect(level=logging.WARNING)
    saved = target.level, target.propagate
    if not target.isEnabledFor(logging.WARNING):
        target.setLevel(logging.WARNING)
    target.propagate = False  # reported once, briefly, as the load error instead
    target.addHandler(handler)
    try:
        yield problems
    finally:
        target.removeHandler(handler)
        target.setLevel(saved[0])
        target.propagate = saved[1]


def _hub_error_message(source: str, exc: BaseException) -> str:
    from huggingface_hub.utils import (
        EntryNotFoundError,
        GatedRepoError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
    )

    if isinstance(exc, OfflineModeIsEnabled):
        return (
            f"'{source}' is not in the model cache and Hugging Face hub access is disabled "
            "(HF_HUB_OFFLINE); use a local model directory or download it first"
        )
    if isinstance(exc, GatedRepoError):
        return f"Hugging Face repo '{source}' is gated: log in / accept its terms first ({exc})"
    if isinstance(exc, RepositoryNotFoundError):
        return (
            f"'{source}' is not a local directory, and no Hugging Face repo of that name exists "
            "(or it is private)"
        )
    if isinstance(exc, EntryNotFoundError):
        return (
            f"Hugging Face repo '{source}' lacks a file a SpeechBrain model needs "
            f"({type(exc).__name__}: {_short(exc, 150)})"
        )
    return (
        f"'{source}' is neither a local directory nor cached, and the Hugging Face hub could "
        f"not be reached to download it ({type(exc).__name__}: {_short(exc)})"
    )


def _probe_hub(source: str) -> None:
    """One short request, no retries: is ``source`` downloadable from the hub right now?"""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    try:
        get_hf_file_metadata(hf_hub_url(source, HPARAMS_FILE), timeout=HUB_PROBE_TIMEOUT_S)
    except Exception as exc:
        raise ModelLoadError(_hub_error_message(source, exc)) from exc


def _short(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass
class _Loaded:
    classifier: Any
    identity: str


def _load_classifier(source: str, *, cache_dir: Path, device: str) -> _Loaded:
    """Load one ``EncoderClassifier`` from a local directory or a hub repo id."""
    from speechbrain.utils.fetching import FetchConfig

    source = source.strip()
    if not source:
        raise ModelLoadError("no model source configured")
    if source.startswith(("http://", "https://")):
        raise ModelLoadError(
            f"'{source}': URLs are not supported; give a Hugging Face repo id or a local directory"
        )

    local_dir = Path(source).expanduser()
    if local_dir.is_dir():
        hparams_path = local_dir / HPARAMS_FILE
        if not hparams_path.is_file():
            raise ModelLoadError(f"'{local_dir}' has no {HPARAMS_FILE}: not a SpeechBrain model")
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
                f"({type(exc).__name__}: {_short(exc, 100)})"
            ) from exc
        return _Loaded(classifier, _identity(classifier, _label_for_local(directory)))

    if local_dir.exists():
        raise ModelLoadError(f"'{source}' is a file, not a model directory")
    if _looks_like_path(source) or not _REPO_ID.match(source):
        raise ModelLoadError(f"model directory '{source}' does not exist")

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
                raise ModelLoadError(_hub_error_message(source, exc)) from exc
            raise
    return _Loaded(classifier, _identity(classifier, source))


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

    with _failed_parameter_transfers() as problems:
        classifier = EncoderClassifier.from_hparams(
            source=source,
            savedir=None,  # load files where they are: no symlink farm to race over
            overrides=overrides,
            run_opts={"device": device},
            fetch_config=config,
        )
    if problems:
        more = f" and {len(problems) - 3} more" if len(problems) > 3 else ""
        raise ModelLoadError(
            "checkpoint does not match hyperparams.yaml (" + ", ".join(problems[:3]) + more + ")"
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


# --- the registry ------------------------------------------------------------------------------
class ModelRegistry:
    """Every model the process uses, loaded once, plus why any of them is missing."""

    def __init__(
        self,
        *,
        language_identifier: LanguageIdentifier | None = None,
        encoders: dict[str, SpeakerEncoder] | None = None,
        statuses: dict[str, ModelStatus] | None = None,
    ) -> None:
        self.language_identifier = language_identifier
        self.encoders: dict[str, SpeakerEncoder] = dict(encoders or {})
        if statuses is None:
            statuses = {
                space: ModelStatus(space, enc.source, True, enc.identity, None, None)
                for space, enc in self.encoders.items()
            }
            if language_identifier is not None:
                statuses[LANGID_ROLE] = ModelStatus(
                    LANGID_ROLE,
                    language_identifier.source,
                    True,
                    language_identifier.identity,
                    None,
                    None,
                )
        self.statuses: dict[str, ModelStatus] = dict(statuses)

    @classmethod
    def load(
        cls, sources: Mapping[str, str], *, cache_dir: Path, device: str = "auto"
    ) -> ModelRegistry:
        """Load every ``role → source``; a model that fails is recorded, never raised."""
        resolved = resolve_device(device)
        device_problem = _device_problem(resolved)
        language_identifier: LanguageIdentifier | None = None
        encoders: dict[str, SpeakerEncoder] = {}
        statuses: dict[str, ModelStatus] = {}
        for role, source in sources.items():
            source = "" if source is None else str(source)
            started = time.perf_counter()
            try:
                if device_problem:
                    raise ModelLoadError(device_problem)
                loaded = _load_classifier(source, cache_dir=Path(cache_dir), device=resolved)
                if role == LANGID_ROLE:
                    language_identifier = LanguageIdentifier(
                        loaded.classifier, source=source, identity=loaded.identity
                    )
                else:
                    encoders[role] = SpeakerEncoder(
                        loaded.classifier, space=role, source=source, identity=loaded.identity
                    )
            except Exception as exc:
                message = str(exc) if isinstance(exc, ModelLoadError) else _describe(exc)
                log.warning("model %s could not be loaded from %r: %s", role, source, message)
                statuses[role] = ModelStatus(role, source, False, None, message, None)
                continue
            seconds = round(time.perf_counter() - started, 3)
            statuses[role] = ModelStatus(role, source, True, loaded.identity, None, seconds)
            log.info("model %s loaded from %r in %.2fs (%s)", role, source, seconds, resolved)
        return cls(language_identifier=language_identifier, encoders=encoders, statuses=statuses)

    def encoder(self, space: str) -> SpeakerEncoder:
        found = self.encoders.get(space)
        if found is not None:
            return found
        status = self.statuses.get(space)
        if status is None or space == LANGID_ROLE:
            known = sorted(role for role in self.statuses if role != LANGID_ROLE)
            raise errors.UnknownSpace(
                f"unknown encoder space {space!r}", details={"known_spaces": known}
            )
        raise errors.ModelUnavailable(
            f"the {space} speaker encoder ({status.source or 'not configured'}) is not loaded: "
            f"{status.error}",
            details={"model": space, "source": status.source, "reason": status.error},
        )

    def require_language_identifier(self) -> LanguageIdentifier:
        if self.language_identifier is not None:
            return self.language_identifier
        status = self.statuses.get(LANGID_ROLE)
        source = status.source if status else ""
        reason = status.error if status else "no language-ID model configured"
        raise errors.ModelUnavailable(
            f"the language-ID model ({source or 'not configured'}) is not loaded: {reason}; "
            "pass the language explicitly instead",
            details={"model": LANGID_ROLE, "source": source, "reason": reason},
        )

    @property
    def all_loaded(self) -> bool:
        return all(status.loaded for status in self.statuses.values())


def _device_problem(device: str) -> str | None:
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


def _describe(exc: BaseException) -> str:
    """A one-line human explanation of an unexpected loading failure."""
    if isinstance(exc, FileNotFoundError) and getattr(exc, "filename", None):
        return f"missing file {exc.filename}"
    return f"{type(exc).__name__}: {_short(exc)}"
