"""All configuration in one object, read from ``VOICESEARCH_*`` environment variables and ``.env``.

Every other module receives a :class:`Settings` instance, one of its typed sections
(:class:`ClipSettings`, :class:`QualitySettings`, :class:`DecisionSettings`,
:class:`AsNormSettings`, :class:`InferenceSettings`, :class:`VectorStoreSettings`: small frozen
dataclasses built by ``Settings.clip()``, ``.quality()``, ``.decisions()``, ``.asnorm()``,
``.inference()``, ``.vector_store_settings()``) or the
values it needs, as an argument; nothing reads the environment on its own, so tests build a
``Settings(...)`` and pass it in.

Longer than ~400 lines on purpose: every setting is declared here, once, with its bounds and the
description `voicesearch doctor` and the README's table follow; splitting it would scatter the
one place an operator's variable is defined.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

#: Languages whose speakers are better served by the CN-Celeb encoder (ISO 639 codes as the
#: VoxLingua107 model emits them, plus the common aliases a caller may send).
DEFAULT_CNCELEB_LANGUAGES = ("zh", "cmn", "yue", "ja", "ko", "th", "vi")

# The encoder spaces the service knows. A space is "the vectors one model produces": vectors from
# different spaces are never compared with each other.
SPACE_VOXCELEB = "voxceleb"
SPACE_CNCELEB = "cnceleb"


def _split_csv(value: object) -> object:
    """Accept ``a,b,c`` from the environment as well as a JSON list / Python list."""
    if isinstance(value, str):
        stripped = value.strip()
        if stripped.startswith("["):
            import json

            return json.loads(stripped)
        return [item.strip() for item in stripped.split(",") if item.strip()]
    return value


def _split_mapping(value: object) -> object:
    """Accept ``key=value,key=value`` (or ``key:value``) as well as JSON objects / dicts."""
    if isinstance(value, str):
        stripped = value.strip()
        if stripped.startswith("{"):
            import json

            return json.loads(stripped)
        mapping: dict[str, str] = {}
        for item in stripped.split(","):
            if not item.strip():
                continue
            sep = "=" if "=" in item else ":"
            key, _, val = item.partition(sep)
            mapping[key.strip()] = val.strip()
        return mapping
    return value


@dataclass(frozen=True)
class ClipSettings:
    """What one upload must be before it is embedded (``service.pipeline.clip``)."""

    max_duration_s: float
    min_duration_s: float
    inference_concurrency: int
    max_inference_queue: int


@dataclass(frozen=True)
class QualitySettings:
    """Voice activity detection and quality codes (``service.pipeline.quality``)."""

    vad: str
    audible_floor_dbfs: float
    min_probe_speech_s: float
    clipped_fraction_warn: float
    low_snr_db: float
    too_quiet_dbfs: float


@dataclass(frozen=True)
class InferenceSettings:
    """Which backend runs the models, on how many threads (``service.pipeline.backends``)."""

    backend: str  # "torch", "onnx" or "onnx-int8"
    threads: int  # intra-op threads per inference; 0: the cores available to this process
    int8_calibration_dir: Path | None  # None: the speech shipped with the package


@dataclass(frozen=True)
class DecisionSettings:
    """What decides ``is_match`` (``service.decisions.policy``): the open-set FPIR target, and the
    operator's fixed thresholds, which win over every calibrated or shipped rule."""

    thresholds: Mapping[str, float]  # fixed cosine threshold per space (operator)
    asnorm_spaces: frozenset[str]  # spaces the operator put under AS-norm
    asnorm_thresholds: Mapping[str, float]  # fixed AS-norm threshold per space (operator)
    fpir_target: float = 0.03  # FPIR* of the max-of-N rule t(N)
    quality_tails: bool = True  # probe quality classes get their shipped strict tails


@dataclass(frozen=True)
class AsNormSettings:
    """AS-norm score normalisation (``service.decisions.normalization``)."""

    spaces: tuple[str, ...]
    top_k: int
    cohorts: Mapping[str, str]  # space -> .npy file of cohort embeddings
    shipped: bool = True  # use the package's cohort where it matches the loaded model


@dataclass(frozen=True)
class VectorStoreSettings:
    """Where the speaker vectors are searched (built by ``service.bootstrap.build_vector_store``):
    the in-process FAISS gallery, or a Milvus server shared by every node (README "Past one
    machine")."""

    kind: str  # "faiss" | "milvus"
    milvus_uri: str | None  # http://host:19530, or a local Milvus Lite file (one process only)
    milvus_token: str | None
    milvus_prefix: str  # collection names: <prefix><space>_<build>, <prefix>state


@dataclass(frozen=True)
class RecordingSettings:
    """Identify-speakers in a recording (``service.recordings``)."""

    window_s: float
    hop_s: float
    min_window_s: float
    bridge_gap_s: float
    cluster_threshold: float
    max_speakers: int
    enroll_token_ttl_s: float  # 0: no enroll tokens are issued
    enroll_token_max_s: float  # speech kept per token


@dataclass(frozen=True)
class LiveSettings:
    """Live "who is speaking now" over a WebSocket (``service.recordings.live``)."""

    window_s: float  # rolling window each event is decided on
    hop_s: float  # stream time between events
    min_speech_s: float  # less speech than this in a window: "silence"
    max_session_s: float
    idle_timeout_s: float
    max_frame_bytes: int
    max_bytes_per_s: int
    max_buffer_bytes: int  # compressed bytes waiting for the decoder
    max_sessions: int  # per worker process


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="VOICESEARCH_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        protected_namespaces=(),
    )

    # --- models -------------------------------------------------------------------------------
    model_langid: str = Field(
        "speechbrain/lang-id-voxlingua107-ecapa",
        description="Language-ID model: a Hugging Face repo id or a local directory in "
        "SpeechBrain's pretrained layout (hyperparams.yaml + *.ckpt + label_encoder.txt).",
    )
    model_voxceleb: str = Field(
        "speechbrain/spkrec-ecapa-voxceleb",
        description="Speaker encoder for the 'voxceleb' space (repo id or local directory).",
    )
    model_cnceleb: str = Field(
        "LanceaKing/spkrec-ecapa-cnceleb",
        description="Speaker encoder for the 'cnceleb' space (repo id or local directory).",
    )
    model_cache_dir: Path | None = Field(
        None,
        description="Where hub downloads and SpeechBrain's per-model working copies go. "
        "Defaults to <data_dir>/models.",
    )
    device: str = Field(
        "auto", description="'auto' (CUDA when available), 'cpu', 'cuda', 'cuda:1'…"
    )
    inference_concurrency: int = Field(
        1,
        ge=1,
        description="Model inferences that may run at once per process. On a small CPU box one "
        "inference already uses every core, so more only adds latency.",
    )
    max_inference_queue: int = Field(
        16,
        ge=0,
        description="Requests per process that may wait for model inference beyond the ones "
        "running; more are refused at once with 503 `overloaded` and `Retry-After` instead of "
        "queueing for tens of seconds.",
    )
    backend: Literal["torch", "onnx", "onnx-int8"] = Field(
        "torch",
        description="What runs the speaker encoders and the language-ID model: 'torch' "
        "(SpeechBrain, the reference; uses a CUDA GPU; the default because the FP32 export "
        "measured no faster on CPU, bench/RESULTS.md), 'onnx' (the same model exported to ONNX "
        "Runtime: same vectors) or 'onnx-int8' (quantised: fastest on CPU, vectors close to but "
        "not equal to torch's, so its profiles are a space of their own: re-enroll when "
        "switching to or from it). Exports are built on first start and cached under "
        "<model_cache_dir>/onnx (`voicesearch export` builds them ahead).",
    )
    inference_threads: int = Field(
        0,
        ge=0,
        description="Intra-op threads per model inference (torch and ONNX Runtime). 0: the "
        "cores this process may use (CPU affinity and cgroup quota) divided by the number of "
        "`serve --workers`.",
    )
    torch_threads: int = Field(
        0, ge=0, description="Deprecated alias of inference_threads, for torch only (0: unset)."
    )
    int8_calibration_dir: Path | None = Field(
        None,
        description="Folder of audio files to calibrate the INT8 models on (default: speech "
        "synthesised with espeak-ng that ships with the package). Changing it changes the "
        "INT8 model identity.",
    )

    # --- routing and decisions ----------------------------------------------------------------
    cnceleb_languages: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(DEFAULT_CNCELEB_LANGUAGES),
        description="Languages routed to the 'cnceleb' space; every other language goes to "
        "'voxceleb'. Comma-separated in the environment.",
    )
    thresholds: Annotated[dict[str, float], NoDecode] = Field(
        # Empty by default: is_match follows the open-set rule t(N) (see fpir_target). A value
        # here is the operator's fixed threshold and wins over calibrated and shipped rules.
        default_factory=dict,
        description="Fixed cosine-similarity threshold per encoder space (`space=value,...`); "
        "wins over the open-set rule t(N) for spaces that decide on the cosine. Default: none.",
    )
    fpir_target: float = Field(
        0.03,
        gt=0,
        lt=1,
        description="Open-set target: share of unenrolled voices allowed to be matched (FPIR*). "
        "The threshold in force grows with the gallery so that FPIR stays at it.",
    )
    quality_tails: bool = Field(
        True,
        description="Probes of the quality classes (>= 2 s of speech; 1-2 s at >= 15 dB SNR) are "
        "decided on the stricter impostor tail measured for their class (`on`/`off`): their "
        "threshold is the higher of the two. The shipped class tails under the shipped rule; "
        "under a calibration, the ones `voicesearch calibrate` fitted.",
    )

    # --- HTTP ---------------------------------------------------------------------------------
    allowed_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        validation_alias="ALLOWED_ORIGINS",
        description="CORS origins allowed to call the API (comma-separated). Empty: no CORS.",
    )
    log_format: Literal["text", "json"] = Field(
        "text",
        description="Log lines: 'text' (plain) or 'json' (one JSON object per line, with the "
        "request id; one request-log line per HTTP request instead of uvicorn's access line).",
    )
    max_upload_bytes: int = Field(
        25 * 1024 * 1024, ge=1, description="Largest accepted audio upload, per file (bytes)."
    )
    max_duration_s: float = Field(
        300.0, gt=0, description="Longest accepted decoded audio, per file (seconds)."
    )
    min_duration_s: float = Field(
        0.5, ge=0, description="Shortest accepted decoded audio, per file (seconds)."
    )
    audible_floor_dbfs: float = Field(
        -75.0,
        le=0,
        description="An upload whose level (99.9th percentile of |x|) is below this is refused "
        "as 'no_speech' (digital silence, dither). The only speech-based refusal: audible "
        "clips in which the VAD finds no speech are accepted with 'no_speech_detected'.",
    )
    max_files_per_enrollment: int = Field(20, ge=1)
    max_top_n: int = Field(100, ge=1)

    # --- storage ------------------------------------------------------------------------------
    data_dir: Path = Field(Path("./data"), description="Database, index snapshots, model cache.")
    database_url: str | None = Field(
        None, description="SQLAlchemy URL. Default: sqlite:///<data_dir>/voicesearch.db"
    )

    # --- vector store (issue 15) ---------------------------------------------------------------
    vector_store: Literal["faiss", "milvus"] = Field(
        "faiss",
        description="Where speaker vectors are searched: 'faiss' (in each process, snapshots "
        "under data_dir/index) or 'milvus' (one Milvus shared by every node; milvus_uri).",
    )
    milvus_uri: str | None = Field(
        None,
        description="With vector_store=milvus: http://host:19530 (a Milvus server or "
        "`python -m milvus_lite server`), or a local Milvus Lite path ending in .db (one "
        "process only). Default: <data_dir>/milvus.db.",
    )
    milvus_token: SecretStr | None = Field(None, description="Milvus token (user:password).")
    milvus_collection_prefix: str = Field(
        "voicesearch_",
        pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,100}$",
        description="Prefix of this installation's Milvus collection names.",
    )

    # --- index (search at scale) ---------------------------------------------------------------
    # (fields for approximate search go here)
    index_type: Literal["auto", "flat", "fastscan", "hnsw"] = Field(
        "auto",
        description="Index per space: 'flat' (exact; to ~50k speakers), 'fastscan' (4-bit codes "
        "of every vector scanned, the best candidates re-scored exactly; for 50k-1M+), 'auto' "
        "(flat below index_auto_threshold, fastscan above) or 'hnsw' (graph; misses the recall "
        "target at 1M on speaker vectors). Measured in bench/RESULTS.md.",
    )
    index_auto_threshold: int = Field(
        50_000, ge=1, description="With index_type=auto: speakers from which fastscan is used."
    )
    index_fastscan_rerank: int = Field(
        1000, ge=10, le=100_000, description="fastscan: candidates re-scored exactly per query."
    )
    index_fastscan_train_size: int = Field(
        20_000, ge=1000, description="fastscan: vectors the 4-bit quantiser is trained on."
    )
    index_hnsw_m: int = Field(32, ge=4, le=128, description="HNSW links per node.")
    index_hnsw_ef_construction: int = Field(
        80, ge=8, description="HNSW build breadth (higher: better graph, slower build)."
    )
    index_hnsw_ef_search: int = Field(
        128, ge=8, description="HNSW search breadth (higher: better recall, slower search)."
    )

    # --- access control and limits (hardening) -------------------------------------------------
    api_keys: SecretStr | None = Field(
        None,
        description="API keys, comma-separated, each `role:key` or `role:name:key` (role is "
        "`admin` or `read`). Empty (and no api_keys_file): the API is open.",
    )
    api_keys_file: Path | None = Field(
        None, description="File with one `role:key` or `role:name:key` per line (# comments)."
    )
    public_docs: bool = Field(
        True, description="Serve /docs, /redoc and /openapi.json without a key (False: off)."
    )
    max_request_bytes: int | None = Field(
        None,
        ge=1,
        description="Largest request body, enforced while streaming (413 above). Default: "
        "max_upload_bytes x max_files_per_enrollment + 1 MiB.",
    )
    max_json_bytes: int = Field(
        32 * 1024 * 1024, ge=1, description="Largest application/json request body (bytes)."
    )
    max_metadata_bytes: int = Field(
        16 * 1024, ge=2, description="Largest speaker metadata object, as compact JSON (bytes)."
    )
    max_metadata_depth: int = Field(8, ge=1, description="Deepest nesting of speaker metadata.")

    # --- speech quality, calibration, score normalisation --------------------------------------
    # (fields for VAD, enrollment minimums, calibration and AS-norm go here)
    vad: str = Field(
        "silero",
        pattern="^(silero|energy)$",
        description="Voice activity detector: 'silero' (Silero VAD, model inside its pip "
        "package, run gain-normalised and at 8 kHz for narrowband uploads) or 'energy' "
        "(frame-energy detector; for synthetic test audio). It measures net speech only: the "
        "whole clip is embedded.",
    )
    min_enroll_speech_s: float = Field(
        1.0,
        ge=0,
        description="Net speech a speaker's utterances must add up to before the speaker is "
        "searchable; below it the profile is stored but incomplete "
        "('insufficient_enrollment_speech').",
    )
    recommended_enroll_speech_s: float = Field(
        8.0,
        ge=0,
        description="Net speech recommended per speaker: below it the enrollment answer warns "
        "('enrollment_below_recommended'); tiers: weak < 3 s, fair < this, good from this.",
    )
    min_probe_speech_s: float = Field(
        1.5,
        ge=0,
        description="Net speech below which a probe's quality report warns 'too_short'. It no "
        "longer withholds the decision: only a probe with no detected speech is 'undecided'.",
    )
    clipped_fraction_warn: float = Field(
        0.001, ge=0, le=1, description="Fraction of full-scale samples above which 'clipped'."
    )
    low_snr_db: float = Field(10.0, description="Estimated SNR (dB) below which 'low_snr'.")
    too_quiet_dbfs: float = Field(-40.0, description="Speech level (dBFS) below which 'too_quiet'.")
    asnorm_spaces: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Spaces whose search scores are AS-norm normalised (comma-separated).",
    )
    asnorm_top_k: int = Field(100, ge=1, description="AS-norm: top-K cohort scores used.")
    asnorm_thresholds: Annotated[dict[str, float], NoDecode] = Field(
        default_factory=dict,
        description="Fixed AS-norm score threshold per space (`space=value,…`); wins over the "
        "open-set rule t(N) for spaces that decide on AS-norm. Default: none.",
    )
    asnorm_cohort: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=dict,
        description="Per-space cohort (.npy of embeddings, `space=path,…`); overrides the "
        "shipped cohort. A space in asnorm_spaces without one uses the enrolled gallery.",
    )
    shipped_cohort: bool = Field(
        True,
        description="Use the package's AS-norm cohort for the voxceleb space when the loaded "
        "checkpoint is the one it was made with (sha256 and dimension checked).",
    )
    narrowband_profiles: bool = Field(
        True,
        description="Telephone-band profiles (`on`/`off`): enrollment also embeds each clip "
        "through the telephone chain, and a probe of <= 8 kHz source is scored against those "
        "profiles with its own pair-type tails. Only where fitted (shipped cohort in use).",
    )

    # --- recordings (identify-speakers) ----------------------------------------------------------
    identify_window_s: float = Field(
        1.5, ge=0.5, le=10, description="Identify-speakers: length of each embedded window (s)."
    )
    identify_hop_s: float = Field(
        0.75, ge=0.1, le=10, description="Identify-speakers: step between windows (s)."
    )
    identify_cluster_threshold: float = Field(
        0.45,
        ge=-1,
        le=1,
        description="Identify-speakers: least average cosine similarity of two groups of "
        "windows for them to be one speaker, when the number of speakers is not given.",
    )
    identify_max_speakers: int = Field(
        20, ge=1, le=100, description="Largest num_speakers / max_speakers a request may ask."
    )
    enroll_token_ttl_s: float = Field(
        900,
        ge=0,
        le=7 * 86400,
        description="Identify-speakers: how long the enroll token of an unknown voice is valid "
        "(s); 0 issues none.",
    )
    enroll_token_max_s: float = Field(
        60,
        ge=1,
        le=600,
        description="Identify-speakers: most speech of one unknown voice kept with its enroll "
        "token (s; its most typical segments).",
    )

    # --- live (WebSocket /identify-live) ---------------------------------------------------------
    live_window_s: float = Field(
        2.0, ge=0.5, le=10, description="Live: the rolling window each event is decided on (s)."
    )
    live_hop_s: float = Field(
        0.5, ge=0.1, le=1.0, description="Live: stream time between two events (s; at most 1)."
    )
    live_min_speech_s: float = Field(
        0.5, ge=0.0, le=10, description="Live: less speech than this in a window is `silence`."
    )
    live_max_session_s: float = Field(
        3600.0, gt=0, description="Live: longest session (s of wall-clock time)."
    )
    live_idle_timeout_s: float = Field(
        10.0, gt=0, description="Live: a session with no message for this long is closed (s)."
    )
    live_max_frame_bytes: int = Field(
        131_072, ge=1024, description="Live: largest WebSocket message (bytes)."
    )
    live_max_bytes_per_s: int = Field(
        262_144,
        ge=32_000,
        description="Live: sustained input rate allowed per session (bytes/s; 16 kHz s16 PCM "
        "is 32 000, float32 64 000), with a burst of one second's allowance.",
    )
    live_max_buffer_bytes: int = Field(
        1_048_576,
        ge=65_536,
        description="Live: compressed bytes (WebM/Opus) waiting for the decoder, at most.",
    )
    live_max_sessions: int = Field(
        4, ge=1, description="Live: concurrent sessions per worker process."
    )

    @model_validator(mode="after")
    def _live_hop_within_window(self) -> Settings:
        # A hop longer than the window would leave stretches of every stream unanalysed.
        if self.live_hop_s > self.live_window_s:
            raise ValueError(
                f"VOICESEARCH_LIVE_HOP_S ({self.live_hop_s:g}) must not exceed "
                f"VOICESEARCH_LIVE_WINDOW_S ({self.live_window_s:g})"
            )
        return self

    @field_validator("cnceleb_languages", "allowed_origins", "asnorm_spaces", mode="before")
    @classmethod
    def _csv(cls, value: object) -> object:
        return _split_csv(value)

    @field_validator("thresholds", "asnorm_cohort", "asnorm_thresholds", mode="before")
    @classmethod
    def _mapping(cls, value: object) -> object:
        return _split_mapping(value)

    @field_validator("cnceleb_languages")
    @classmethod
    def _lower(cls, value: list[str]) -> list[str]:
        return [language.lower() for language in value]

    @cached_property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'voicesearch.db').resolve()}"

    @cached_property
    def resolved_model_cache_dir(self) -> Path:
        return self.model_cache_dir or self.data_dir / "models"

    @property
    def request_body_limit(self) -> int:
        """Cap on a whole request body (every file of an enrollment plus form overhead)."""
        if self.max_request_bytes:
            return self.max_request_bytes
        return self.max_upload_bytes * self.max_files_per_enrollment + 1024 * 1024

    @property
    def model_sources(self) -> dict[str, str]:
        """Role → source for every model the service loads (role is a space name or 'langid')."""
        return {
            "langid": self.model_langid,
            SPACE_VOXCELEB: self.model_voxceleb,
            SPACE_CNCELEB: self.model_cnceleb,
        }

    # --- typed sections: each part of the service gets only what it reads ---------------------
    def clip(self) -> ClipSettings:
        return ClipSettings(
            max_duration_s=self.max_duration_s,
            min_duration_s=self.min_duration_s,
            inference_concurrency=self.inference_concurrency,
            max_inference_queue=self.max_inference_queue,
        )

    def quality(self) -> QualitySettings:
        return QualitySettings(
            vad=self.vad,
            audible_floor_dbfs=self.audible_floor_dbfs,
            min_probe_speech_s=self.min_probe_speech_s,
            clipped_fraction_warn=self.clipped_fraction_warn,
            low_snr_db=self.low_snr_db,
            too_quiet_dbfs=self.too_quiet_dbfs,
        )

    def inference(self) -> InferenceSettings:
        return InferenceSettings(
            backend=self.backend,
            threads=self.inference_threads,
            int8_calibration_dir=self.int8_calibration_dir,
        )

    def decisions(self) -> DecisionSettings:
        return DecisionSettings(
            thresholds=dict(self.thresholds),
            asnorm_spaces=frozenset(self.asnorm_spaces),
            asnorm_thresholds=dict(self.asnorm_thresholds),
            fpir_target=self.fpir_target,
            quality_tails=self.quality_tails,
        )

    def recordings(self) -> RecordingSettings:
        return RecordingSettings(
            window_s=self.identify_window_s,
            hop_s=self.identify_hop_s,
            min_window_s=min(0.5, self.identify_window_s),
            bridge_gap_s=0.5,
            cluster_threshold=self.identify_cluster_threshold,
            max_speakers=self.identify_max_speakers,
            enroll_token_ttl_s=self.enroll_token_ttl_s,
            enroll_token_max_s=min(self.enroll_token_max_s, self.max_duration_s),
        )

    def live(self) -> LiveSettings:
        return LiveSettings(
            window_s=self.live_window_s,
            hop_s=self.live_hop_s,
            min_speech_s=self.live_min_speech_s,
            max_session_s=self.live_max_session_s,
            idle_timeout_s=self.live_idle_timeout_s,
            max_frame_bytes=self.live_max_frame_bytes,
            max_bytes_per_s=self.live_max_bytes_per_s,
            max_buffer_bytes=self.live_max_buffer_bytes,
            max_sessions=self.live_max_sessions,
        )

    def vector_store_settings(self) -> VectorStoreSettings:
        uri = self.milvus_uri or str(self.data_dir / "milvus.db")
        token = self.milvus_token.get_secret_value() if self.milvus_token else None
        return VectorStoreSettings(
            kind=self.vector_store,
            milvus_uri=uri if self.vector_store == "milvus" else self.milvus_uri,
            milvus_token=token,
            milvus_prefix=self.milvus_collection_prefix,
        )

    def asnorm(self) -> AsNormSettings:
        return AsNormSettings(
            spaces=tuple(self.asnorm_spaces),
            top_k=self.asnorm_top_k,
            cohorts=dict(self.asnorm_cohort),
            shipped=self.shipped_cohort,
        )
