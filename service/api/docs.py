"""OpenAPI descriptions shared by several routes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from service.api.schemas import ErrorResponse


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    descriptions = {
        400: "Bad request (e.g. empty audio file).",
        401: "No API key, or an unknown one (`WWW-Authenticate: Bearer`).",
        403: "The API key's role does not allow this operation.",
        404: "Speaker not found.",
        409: "A speaker with this external id already exists.",
        413: "Upload or decoded audio too large / too long.",
        410: "The enroll token expired.",
        415: "The upload is not decodable audio.",
        422: "Invalid input: validation error, too little speech, bad embedding.",
        503: "A model this request needs is not loaded, or storage is busy.",
    }
    return {s: {"model": ErrorResponse, "description": descriptions[s]} for s in statuses}


AUDIO_ERRORS = error_responses(400, 413, 415, 422, 503)


def json_body(model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` documenting a JSON body a route reads itself (``deps.parse_json_body``,
    so it is parsed off the event loop). Add ``model`` to :func:`add_body_schemas` too."""
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}
            },
        }
    }


def add_body_schemas(app: FastAPI, models: Sequence[type[BaseModel]]) -> None:
    """Put the schemas of bodies that routes read themselves into the app's OpenAPI
    components (FastAPI only collects the models of declared parameters)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()
        _, definitions = models_json_schema(
            [(model, "validation") for model in models],
            ref_template="#/components/schemas/{model}",
        )
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for name, definition in definitions.get("$defs", {}).items():
            components.setdefault(name, definition)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
