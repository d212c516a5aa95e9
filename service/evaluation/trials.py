"""Trials on a labelled manifest: the one way eval and calibrate enroll and probe the service.

Manifest: CSV with header ``path,speaker,role[,language]``; ``role`` is ``enroll`` or ``probe``;
``path`` is relative to ``root`` (default: the manifest's folder). A probe whose speaker has no
``enroll`` row is an *unenrolled* (open-set) probe: all its scores are impostor scores.
``unknown`` or an empty language means "not given".

Both ``voicesearch eval`` (``service.evaluation.evaluate``) and ``voicesearch calibrate``
(``service.evaluation.calibrate``) run a fresh temporary service (``service.bootstrap``):
:func:`enroll_speakers` enrolls each speaker's files through ``VoiceSearch.enroll``, and
:func:`search_probe` sends each probe through the service's decode (decoding, resampling,
speech checks, VAD), its encoder and the gallery's FAISS search over *every* enrolled speaker,
so each probe yields one score per speaker and space.
"""

from __future__ import annotations

import csv
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from service.decisions.bandwidth import is_narrowband
from service.search.vector_store import Hit
from service.search.voicesearch import VoiceSearch

ROLES = ("enroll", "probe")

#: Called with the number of items just done (a speaker enrolled, a probe searched, a clip
#: embedded): what the command-line progress bars hang on.
Progress = Callable[[int], Any]


def no_progress(done: int) -> None:
    return None


def progress_bar(description: str, total: int, *, enabled: bool = True) -> Any:
    """A progress bar on stderr (``eval`` and ``calibrate`` take minutes on a CPU)."""
    from tqdm import tqdm

    return tqdm(total=total, desc=description, unit="clip", file=sys.stderr, disable=not enabled)


def work_items(rows: list[Row]) -> int:
    """Items :func:`enroll_speakers` and one probe pass report: speakers + probes."""
    return len(enroll_rows(rows)) + len(probe_rows(rows))


@dataclass(frozen=True)
class Row:
    path: Path
    speaker: str
    role: str
    language: str | None


def read_manifest(manifest: Path, root: Path | None = None) -> list[Row]:
    manifest = Path(manifest)
    base = Path(root) if root is not None else manifest.parent
    rows: list[Row] = []
    with open(manifest, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = {"path", "speaker", "role"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{manifest}: missing column(s) {sorted(missing)}")
        for line, record in enumerate(reader, start=2):
            role = (record["role"] or "").strip().lower()
            if role not in ROLES:
                raise ValueError(f"{manifest}:{line}: role must be enroll or probe, got {role!r}")
            language = (record.get("language") or "").strip() or None
            if language and language.lower() == "unknown":
                language = None
            path = base / record["path"].strip()
            if not path.is_file():
                raise FileNotFoundError(f"{manifest}:{line}: no such file {path}")
            rows.append(Row(path, record["speaker"].strip(), role, language))
    if not any(r.role == "enroll" for r in rows) or not any(r.role == "probe" for r in rows):
        raise ValueError(f"{manifest}: needs at least one enroll row and one probe row")
    return rows


def enroll_rows(rows: list[Row]) -> dict[str, list[Row]]:
    """Each enrolled speaker's enroll rows, speakers in manifest order."""
    enroll: dict[str, list[Row]] = {}
    for row in rows:
        if row.role == "enroll":
            enroll.setdefault(row.speaker, []).append(row)
    return enroll


def probe_rows(rows: list[Row]) -> list[Row]:
    return [r for r in rows if r.role == "probe"]


async def enroll_speakers(
    vs: VoiceSearch, rows: list[Row], progress: Progress = no_progress
) -> dict[str, int]:
    """Enroll each speaker's files in one ``VoiceSearch.enroll`` (language: the rows' language
    when they agree, else none); returns ``{speaker: integer id}`` in manifest order, the id
    gallery hits carry."""
    enroll = enroll_rows(rows)
    for speaker, speaker_rows in enroll.items():
        languages = {r.language for r in speaker_rows}
        await vs.enroll(
            [r.path.read_bytes() for r in speaker_rows],
            external_id=speaker,
            name=speaker,
            metadata=None,
            language=languages.pop() if len(languages) == 1 else None,
        )
        progress(1)
    # Gallery hits carry the integer primary key; map it back to the external id.
    return {speaker: vs.store.get(speaker).id for speaker in enroll}


@dataclass(frozen=True, eq=False)
class ProbeSearch:
    """One probe searched in one space."""

    space: str
    vector: np.ndarray  # the probe's embedding in that space
    hits: list[Hit]  # enrolled speakers, best first
    # Speech was detected in the probe. The service never matches a probe without any (its
    # verdict is ``undecided``), so evaluation and calibration must not count one as decided.
    decided: bool = True
    # Its measured quality, which picks its probe quality class (``calibrate`` fits their
    # tails); ``narrowband``: source <= 8 kHz (find-match never gives such a probe a class's
    # wideband tail).
    speech_s: float | None = None
    snr_db: float | None = None
    narrowband: bool = False


async def search_probe(
    vs: VoiceSearch,
    row: Row,
    k: int,
    *,
    spaces: list[str] | None = None,
    telephone_band: bool = False,
) -> list[ProbeSearch]:
    """Decode ``row``'s audio through the service's pipeline and search the top ``k`` enrolled
    speakers in each of ``spaces``; by default in the one space its language routes to (the
    manifest's language, else detection when the language-ID model is loaded, else voxceleb) —
    what ``VoiceSearch.search_audio`` does before searching, minus the top_n cap.

    ``telephone_band``: a probe of <= 8 kHz source searches the space's telephone-band profiles
    where it has them, as find-match does (``ProbeSearch.space`` still names the encoder space).
    """
    pipeline = vs.pipeline
    audio, report = await pipeline.infer(pipeline.decode_assessed, row.path.read_bytes())
    if spaces is None:
        spaces = [(await pipeline.infer(pipeline.route_or_default, audio, row.language)).space]
    narrowband = is_narrowband(audio.source_sample_rate)
    found = []
    for space in spaces:
        vector = await pipeline.infer(vs.models.encoder(space).embed, audio.samples)
        view = vs.views.get(space) if telephone_band and narrowband else None
        searched = view.derived if view is not None else space
        hits = vs.gallery.search(searched, vector[None, :], k)[0]
        found.append(
            ProbeSearch(
                space,
                vector,
                hits,
                decided=report.speech_s > 0.0,
                speech_s=report.speech_s,
                snr_db=report.snr_db,
                narrowband=narrowband,
            )
        )
    return found
