"""`voicesearch doctor [--json]`: is this installation able to run the service, and if not, why?

Reports, in this order: Python; each package the service runs on (installed version, and whether
it imports — a package can be installed and still fail to load, as torchaudio built for another
torch does); the compute device; the data directory; every configured model (loaded or not, and
why, with the failure's kind). Exit status 0 when every package imports and every model that is
switched on loads; 1 otherwise. Models switched off (``VOICESEARCH_MODEL_…=off``) are listed and
not counted.

It loads the models exactly as the service does (same loader, same cache), so "doctor says ok"
means "serve will load them".
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from service.core.settings import Settings

if TYPE_CHECKING:  # imported lazily below: doctor must start without torch
    from service.decisions.cohort import SpaceScoring

#: What to do about each kind of model failure (service.pipeline.loading.FAILURE_*).
ADVICE = {
    "dependency": "reinstall with the pinned versions: pip install -c constraints.txt -e .",
    "files_missing": "check the path / repo id, or download the model (see README, Offline)",
    "hub_unreachable": "no network to the Hugging Face hub: download the model elsewhere and "
    "point the setting at its directory",
    "bad_checkpoint": "the model files are corrupt or do not fit hyperparams.yaml: download again",
    "device": "set VOICESEARCH_DEVICE=cpu or a device that exists",
    "config": "fix the model setting (a Hugging Face repo id, a local directory, or off)",
    "other": "see the message; `voicesearch doctor --json` shows every detail",
}


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    kind: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    doctor = subparsers.add_parser(
        "doctor", help="check the installation, the device and every configured model"
    )
    doctor.add_argument("--json", action="store_true", help="machine-readable output")
    doctor.set_defaults(handler=run)


def _package_checks() -> list[Check]:
    from service.pipeline.dependencies import report

    checks = [Check("python", True, platform.python_version())]
    for dep in report():
        version = dep.version or "not installed"
        checks.append(
            Check(dep.distribution, dep.ok, version if dep.ok else f"{version}: {dep.error}")
        )
    return checks


def _device_check(settings: Settings) -> Check:
    from service.pipeline.dependencies import inspect
    from service.pipeline.loading import find_device_problem, resolve_device

    if not inspect("torch").ok:
        return Check("device", False, f"{settings.device}: torch does not import", "dependency")
    import torch

    resolved = resolve_device(settings.device)
    problem = find_device_problem(resolved)
    cuda = "CUDA available" if torch.cuda.is_available() else "no CUDA"
    detail = f"{resolved} ({cuda}; torch threads {torch.get_num_threads()})"
    if problem:
        return Check("device", False, problem, "device")
    return Check("device", True, detail)


def _data_dir_check(settings: Settings) -> Check:
    import os

    directory = settings.data_dir.resolve()
    existing = directory
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    writable = os.access(existing, os.W_OK)
    state = "exists" if directory.exists() else "will be created"
    return Check(
        "data dir",
        writable,
        f"{directory} ({state})" if writable else f"{directory}: {existing} is not writable",
    )


def _model_checks(settings: Settings) -> list[Check]:
    from service.pipeline.registry import ModelRegistry

    registry = ModelRegistry.load(
        settings.model_sources,
        cache_dir=settings.resolved_model_cache_dir,
        device=settings.device,
        inference=settings.inference(),  # the backend the service will run (exports it if needed)
    )
    checks = []
    for role, status in registry.statuses.items():
        name = f"model {role}"
        if not status.enabled:
            checks.append(Check(name, True, "switched off", extra={"enabled": False}))
        elif status.loaded:
            detail = (
                f"{status.source} — {status.identity} on {status.backend} "
                f"({status.load_seconds:.1f} s)"
            )
            extra = {"identity": status.identity, "backend": status.backend}
            checks.append(Check(name, True, detail, extra=extra))
        else:
            kind = status.error_kind or "other"
            detail = f"{status.source}: {status.error} → {ADVICE.get(kind, ADVICE['other'])}"
            checks.append(Check(name, False, detail, kind))
    checks.extend(scoring_checks(settings, registry))
    return checks


def _strict_note(settings: Settings, chosen: SpaceScoring) -> str:
    """Which probe quality classes are held to a stricter shipped tail, or why none are."""
    rules = chosen.strict_for(chosen.score_type, settings.quality_tails)
    if rules is not None:
        classes = "; ".join(f"{r.name.replace('_', ' ')} ({r.describe()})" for r in rules)
        return f"stricter tails for {classes}"
    why = (
        "only with AS-norm on the shipped cohort of its checkpoint"
        if settings.quality_tails
        else "VOICESEARCH_QUALITY_TAILS=off"
    )
    return f"probe quality classes: pooled tail ({why})"


def scoring_checks(settings: Settings, registry: Any) -> list[Check]:
    """Per loaded encoder: cosine or AS-norm, which cohort, and why the shipped one is or is
    not used (it belongs to one checkpoint only)."""
    from service.decisions.bandwidth import resolve_space_scoring

    try:
        scoring, views, why_not = resolve_space_scoring(settings, registry.encoders)
    except (OSError, ValueError) as exc:
        return [Check("scores", False, f"AS-norm cohort: {exc}", "config")]
    return [
        Check(
            f"scores {space}",
            True,
            f"{chosen.score_type}: {chosen.cohort_status}; default rule "
            f"{chosen.default_note(chosen.score_type)}; {_strict_note(settings, chosen)}; "
            "telephone-band profiles: "
            + (f"on ({views[space].derived})" if space in views else f"off, {why_not[space]}"),
            extra={"score_type": chosen.score_type, "cohort": chosen.cohort_origin},
        )
        for space, chosen in scoring.items()
    ]


def run(args: argparse.Namespace, settings: Settings) -> int:
    checks = _package_checks()
    checks.append(_device_check(settings))
    checks.append(_data_dir_check(settings))
    checks.extend(_model_checks(settings))
    problems = [c for c in checks if not c.ok]
    if args.json:
        json.dump({"ok": not problems, "checks": [asdict(c) for c in checks]}, sys.stdout, indent=2)
        print()
    else:
        width = max(len(c.name) for c in checks)
        for check in checks:
            mark = "ok  " if check.ok else "FAIL"
            kind = f" [{check.kind}]" if check.kind else ""
            print(f"{mark} {check.name:<{width}}  {check.detail}{kind}")
        print(
            "doctor: everything needed is working"
            if not problems
            else f"doctor: {len(problems)} problem(s): {', '.join(c.name for c in problems)}"
        )
    return 1 if problems else 0
