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
    description="Per encoder space: the threshold `is_match` uses now, the score it applies "
    "to (`cosine`, or `asnorm` with the shipped or an operator cohort), the rule (`max_of_n_tail`: "
    "t(N) keeps the share of unenrolled voices matched at `fpir_target` for the current "
    "`gallery_size`; `fixed`), t(N) for N = 1 … 10⁶, and where it came from: `shipped` (the "
    "package default, `note` says whether it was fitted for the loaded checkpoint), `calibrated` "
    "(`voicesearch calibrate`: date, measured FPIR/FNIR, trial counts, data) or `setting` (an "
    "operator's fixed threshold).",
)
async def calibration(voice: VoiceSearchDep) -> CalibrationResponse:
    return calibration_out(await voice.calibration_in_force())
