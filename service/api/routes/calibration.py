"""`GET /calibration`: which decision threshold is in force per space, and where it came from."""

from __future__ import annotations

from fastapi import APIRouter

from service.api.auth import RequireRead
from service.api.deps import VoiceSearchDep
from service.api.mappers import calibration_out
from service.api.schemas import CalibrationResponse

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
    return calibration_out(await voice.calibration_in_force())
