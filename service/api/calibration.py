"""`GET /calibration`: which decision threshold is in force per space, and where it came from."""

from __future__ import annotations

import anyio
from fastapi import APIRouter

from service.api.deps import VoiceSearchDep
from service.auth import RequireRead
from service.schemas import CalibrationResponse, CalibrationSpaceOut

router = APIRouter(tags=["calibration"], dependencies=[RequireRead])


@router.get(
    "/calibration",
    response_model=CalibrationResponse,
    summary="Decision thresholds in force and their provenance",
    description="Per encoder space: the threshold `is_match` uses, the score it applies to "
    "(`cosine`, or `asnorm` when score normalisation is on), and where it came from — a "
    "calibration stored by `voicesearch calibrate` for the loaded model (date, target FAR, "
    "measured FAR/FRR/EER, trial counts, data) or the configured default (which setting).",
)
async def calibration(voice: VoiceSearchDep) -> CalibrationResponse:
    await anyio.to_thread.run_sync(voice.policy.refresh)
    spaces: dict[str, CalibrationSpaceOut] = {}
    for space, status in voice.models.statuses.items():
        if space == "langid":
            continue
        decision = voice.policy.decision(space)
        record = decision.record
        spaces[space] = CalibrationSpaceOut(
            space=space,
            model_identity=status.identity,
            threshold=decision.threshold,
            score_type=decision.score_type,
            source=decision.source,
            setting=decision.setting,
            calibrated_at=record.created_at if record else None,
            target_far=record.target_far if record else None,
            far=record.far if record else None,
            frr=record.frr if record else None,
            eer=record.eer if record else None,
            n_genuine=record.n_genuine if record else None,
            n_impostor=record.n_impostor if record else None,
            n_speakers=record.n_speakers if record else None,
            data=record.source if record else None,
            match_probability=decision.logistic is not None,
            asnorm=voice.normalizer is not None and voice.normalizer.enabled(space),
        )
    return CalibrationResponse(spaces=spaces)
