"""The OpenAPI 3.0 description of the collector, served at `/openapi.json`."""

from __future__ import annotations

from typing import Any

from conversion_platform import events
from conversion_platform.collector.browser import PAGE_FIELDS
from conversion_platform.collector.config import (
    MAX_BODY_BYTES,
    MAX_EVENTS_PER_REQUEST,
    MAX_PIXEL_BODY_BYTES,
)

_NULLABLE_TEXT = {"type": "string", "nullable": True, "maxLength": 4096}
_TIME = {
    "oneOf": [
        {"type": "string", "description": "ISO 8601 with a UTC offset"},
        {"type": "number", "description": "Unix seconds or milliseconds"},
    ]
}
_CONSENT = {
    "type": "string",
    "nullable": True,
    "enum": ["granted", "denied", "unknown", None],
    "description": "Google Consent Mode v2 state; absent means unknown",
}


def _event_schema(*, server: bool) -> dict[str, Any]:
    fields = events.INCOMING_FIELDS if server else PAGE_FIELDS
    properties: dict[str, Any] = {}
    for name in fields:
        if name in ("event_time", "received_at"):
            properties[name] = _TIME
        elif name == "value":
            properties[name] = {"type": "number", "nullable": True}
        elif name == "items":
            properties[name] = {
                "type": "array",
                "nullable": True,
                "items": {"type": "object", "additionalProperties": True},
            }
        elif name.startswith("consent_"):
            properties[name] = _CONSENT
        elif name == "event_name":
            properties[name] = {
                "type": "string",
                "description": "a standard name ("
                + ", ".join(sorted(events.STANDARD_EVENT_NAMES))
                + ") or a custom snake_case name",
                "pattern": events.CUSTOM_EVENT_NAME_PATTERN,
            }
        else:
            properties[name] = dict(_NULLABLE_TEXT)
    properties.pop("source", None)
    if server:
        properties["received_at"] = {
            **_TIME,
            "description": "honoured only from an import source; otherwise the time received",
        }
    else:
        properties["site"] = {"type": "string", "pattern": "^[A-Za-z0-9_.-]{1,64}$"}
    return {
        "type": "object",
        "required": ["event_name", "event_time"] if server else ["event_name"],
        "properties": properties,
        "additionalProperties": True,
        "description": "Personal fields (email, phone, first_name, last_name, external_id) "
        "are normalised and SHA-256 hashed before anything is stored. Unknown fields are "
        "ignored.",
    }


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


def _rate_limited() -> dict[str, Any]:
    response = _error("Too many hits from this client address")
    response["headers"] = {"Retry-After": {"schema": {"type": "string"}}}
    return response


_LANDING_RESULT = {
    "type": "object",
    "required": ["accepted", "rejected"],
    "properties": {
        "accepted": {"type": "integer", "minimum": 0},
        "rejected": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["index", "errors"],
                "properties": {
                    "index": {"type": "integer", "minimum": 0},
                    "errors": {"type": "array", "items": {"type": "string"}},
                },
            },
        },
        "event_id": {"type": "string"},
    },
}

_GIF_PARAMETERS = [
    {
        "name": name,
        "in": "query",
        "required": name == "event_name",
        "schema": {"type": "string", "maxLength": 4096},
    }
    for name in (*PAGE_FIELDS, "site")
]


def openapi_document() -> dict[str, Any]:
    pixel_responses = {
        "400": _error("Malformed JSON or an invalid event (quarantined with the reason)"),
        "401": _error("An Authorization header with an unknown key"),
        "403": _error("Origin not allowed, or X-Received-At without an import key"),
        "413": _error(f"Body larger than {MAX_PIXEL_BODY_BYTES} bytes"),
        "429": _rate_limited(),
        "503": _error("The database could not commit; retry later"),
    }
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "Conversion platform collector",
            "version": "1",
            "description": "The collection endpoint: a site's backend posts batches of "
            "conversions, its pages send pixel hits. A 200 means the events are committed "
            "to the landing table.",
        },
        "paths": {
            "/v1/events": {
                "post": {
                    "operationId": "postEvents",
                    "summary": "Server-side events from a site's backend",
                    "description": "The body may be compressed with `Content-Encoding: gzip`; "
                    f"the {MAX_BODY_BYTES:,}-byte limit applies to the body as sent and to it "
                    "decompressed (413 beyond either). A body that is not a valid gzip stream "
                    "is 400 `bad_encoding`; another Content-Encoding is 415.",
                    "security": [{"writeKey": []}],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["events"],
                                    "properties": {
                                        "events": {
                                            "type": "array",
                                            "minItems": 1,
                                            "maxItems": MAX_EVENTS_PER_REQUEST,
                                            "items": {"$ref": "#/components/schemas/ServerEvent"},
                                        }
                                    },
                                }
                            }
                        },
                    },
                    "responses": {
                        "200": {
                            "description": "Accepted events committed; rejected ones "
                            "quarantined, by index, with their reasons",
                            "content": {"application/json": {"schema": _LANDING_RESULT}},
                        },
                        "400": _error(
                            "Malformed JSON, not {events: [...]}, or not a valid gzip stream"
                        ),
                        "401": _error("Missing or unknown write key"),
                        "413": _error(
                            f"More than {MAX_EVENTS_PER_REQUEST} events or {MAX_BODY_BYTES} bytes "
                            "(as sent or decompressed)"
                        ),
                        "415": _error("A Content-Encoding other than gzip"),
                        "503": _error("The database could not commit; retry later"),
                    },
                }
            },
            "/v1/pixel": {
                "post": {
                    "operationId": "postPixel",
                    "summary": "One browser event (sendBeacon or fetch); sets the _mpid cookie",
                    "security": [{}, {"writeKey": []}],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/PixelEvent"}
                            },
                            "text/plain": {"schema": {"type": "string"}},
                        },
                    },
                    "responses": {
                        "200": {
                            "description": "Committed",
                            "content": {"application/json": {"schema": _LANDING_RESULT}},
                        },
                        **pixel_responses,
                    },
                },
                "options": {
                    "operationId": "preflightPixel",
                    "summary": "CORS preflight",
                    "responses": {
                        "204": {"description": "Origin allowed"},
                        "400": _error("Not a CORS preflight"),
                        "403": _error("Origin not allowed"),
                    },
                },
            },
            "/v1/pixel.gif": {
                "get": {
                    "operationId": "getPixelGif",
                    "summary": "One browser event from the query string; answers a 1x1 GIF",
                    "security": [{}, {"writeKey": []}],
                    "parameters": _GIF_PARAMETERS,
                    "responses": {
                        "200": {
                            "description": "Committed",
                            "content": {"image/gif": {"schema": {"type": "string"}}},
                        },
                        **pixel_responses,
                    },
                }
            },
            "/pixel.js": {
                "get": {
                    "operationId": "getPixelScript",
                    "summary": "The pixel script: cp('track', name, props) returns the event_id",
                    "responses": {
                        "200": {
                            "description": "JavaScript",
                            "content": {"application/javascript": {"schema": {"type": "string"}}},
                        }
                    },
                }
            },
            "/healthz": {
                "get": {
                    "operationId": "getHealth",
                    "summary": "Ready when the database is reachable",
                    "responses": {
                        "200": {
                            "description": "Healthy",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        },
                        "503": {
                            "description": "Database unreachable",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        },
                    },
                }
            },
            "/openapi.json": {
                "get": {
                    "operationId": "getOpenApi",
                    "summary": "This document",
                    "responses": {
                        "200": {
                            "description": "OpenAPI 3.0",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        }
                    },
                }
            },
        },
        "components": {
            "securitySchemes": {
                "writeKey": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A source's write key (stored hashed by the collector)",
                }
            },
            "schemas": {
                "ServerEvent": _event_schema(server=True),
                "PixelEvent": _event_schema(server=False),
                "Error": {
                    "type": "object",
                    "required": ["error", "message"],
                    "properties": {
                        "error": {"type": "string"},
                        "message": {"type": "string"},
                        "errors": {"type": "array", "items": {"type": "string"}},
                    },
                },
            },
        },
    }
