"""Configuration mistakes as one clear line naming the variable, not a 30-line traceback.

:func:`load_settings` reads :class:`~service.core.settings.Settings` and turns pydantic's
validation error into a :class:`ConfigurationError` whose message names each offending
environment variable (``VOICESEARCH_MAX_TOP_N=-5: must be ≥ 1``). Other modules raise
:class:`ConfigurationError` subclasses for configuration they check themselves (API keys). The
command line prints the message and exits with status 2.
"""

from __future__ import annotations

from pydantic import ValidationError

from service.core.settings import Settings

#: Settings whose values are never echoed back (they hold secrets).
_SECRET_FIELDS = frozenset({"api_keys"})


class ConfigurationError(ValueError):
    """A setting cannot be used; the message names it and says why, in one line."""


def _variable(field: str) -> str:
    info = Settings.model_fields.get(field)
    alias = info.validation_alias if info is not None else None
    if isinstance(alias, str):
        return alias
    prefix = Settings.model_config.get("env_prefix", "")
    return f"{prefix}{field}".upper()


def describe(error: ValidationError) -> str:
    """One line for every problem in ``error``, joined by "; "."""
    parts = []
    for problem in error.errors():
        location = [str(part) for part in problem.get("loc", ())]
        message = str(problem.get("msg", "invalid value"))
        if not location:
            # A rule across settings (a model validator): its message names the variables.
            parts.append(message.removeprefix("Value error, "))
            continue
        field = location[0]
        variable = _variable(field)
        where = f"{variable} ({'.'.join(location[1:])})" if len(location) > 1 else variable
        if field not in _SECRET_FIELDS and len(location) == 1 and "input" in problem:
            shown = repr(problem["input"])
            where = f"{where}={shown if len(shown) <= 60 else shown[:57] + '...'}"
        parts.append(f"{where}: {message}")
    return "; ".join(parts)


def load_settings(**values: object) -> Settings:
    """``Settings(**values)`` (environment and ``.env`` included), or a ConfigurationError."""
    try:
        return Settings(**values)  # type: ignore[arg-type]
    except ValidationError as error:
        raise ConfigurationError(describe(error)) from None
