"""The OpenAPI 3.1 document served at ``/api/v1/openapi.json`` (the request schema comes from the model)."""

from __future__ import annotations

from functools import cache
from typing import Any

from engine.deployments import DeploymentRequest
from engine.verification.request import Request

ERROR = {
    "description": "the reason, as JSON",
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["error", "reason"],
                "properties": {"error": {"type": "string"}, "reason": {"type": "string"}},
            }
        }
    },
}
VERIFICATION: dict[str, Any] = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "key": {"type": ["string", "null"]},
        "service": {"type": "string"},
        "status": {"enum": ["running", "done", "cancelled", "error"]},
        "verdict": {"enum": ["pass", "fail", "inconclusive", None]},
        "score": {"type": ["number", "null"]},
        "reason": {"type": "string"},
        "decided_at": {"type": ["string", "null"], "format": "date-time"},
        "metrics": {"type": "array", "items": {"type": "object"}},
        "instances": {"type": "array", "items": {"type": "object"}},
        "missing": {"type": "array", "items": {"type": "string"}},
        "progress": {"type": "object"},
        "request": {"$ref": "#/components/schemas/Request"},
    },
}


BAND: dict[str, Any] = {
    "type": ["object", "null"],
    "description": "the band the model expects; null on a side that is no risk",
    "properties": {"low": {"type": ["number", "null"]}, "high": {"type": ["number", "null"]}},
}
HEALTH = {"enum": ["learning", "healthy", "observe", "unhealthy"]}
WINDOW: dict[str, Any] = {
    "type": "object",
    "properties": {
        "start": {"type": "string", "format": "date-time"},
        "end": {"type": "string", "format": "date-time"},
        "start_ms": {"type": "integer"},
        "end_ms": {"type": "integer"},
    },
}
ANOMALY: dict[str, Any] = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "service": {"type": "string"},
        "metric": {"type": "string"},
        "instance": {"type": "string"},
        "type": {"enum": ["errors", "latency", "throughput", "saturation", "custom"]},
        "state": {"enum": ["open", "resolved"]},
        "opened_at": {"type": "string", "format": "date-time"},
        "resolved_at": {"type": ["string", "null"], "format": "date-time"},
        "value": {"type": ["number", "null"]},
        "expected": BAND,
        "score": {"type": "number"},
        "peak_score": {"type": "number"},
        "window": WINDOW,
    },
}
SERVICE: dict[str, Any] = {
    "type": "object",
    "properties": {
        "service": {"type": "string"},
        "health": HEALTH,
        "since": {"type": ["string", "null"], "format": "date-time"},
        "open_anomalies": {"type": "array", "items": {"$ref": "#/components/schemas/Anomaly"}},
        "instances": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "instance": {"type": "string"},
                    "health": HEALTH,
                    "since": {"type": ["string", "null"], "format": "date-time"},
                    "open_anomalies": {"type": "integer"},
                },
            },
        },
    },
}
METRIC: dict[str, Any] = {
    "type": "object",
    "properties": {
        "metric": {"type": "string"},
        "instance": {"type": "string"},
        "type": {"type": "string"},
        "state": {"enum": ["learning", "normal", "anomalous"]},
        "value": {"type": ["number", "null"]},
        "expected": BAND,
        "score": {"type": "number", "description": "normalised: 1 = the opening threshold"},
        "time": {"type": "string", "format": "date-time", "description": "the latest sample (metric time)"},
        "seen_at": {"type": "string", "format": "date-time", "description": "published (wall clock)"},
        "anomaly": {"type": ["string", "null"]},
        "window": {"oneOf": [WINDOW, {"type": "null"}]},
    },
}


DEPLOYMENT: dict[str, Any] = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "service": {"type": "string"},
        "version": {"type": "string"},
        "time": {"type": "string", "format": "date-time"},
        "time_ms": {"type": "integer"},
        "source": {"enum": ["api", "flagger", "argo"]},
        "namespace": {"type": ["string", "null"]},
    },
}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


@cache
def openapi() -> dict[str, Any]:
    one = {"$ref": "#/components/schemas/Verification"}
    deployment = {"$ref": "#/components/schemas/Deployment"}
    ident = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "Vigil API", "version": "1"},
        "components": {
            "schemas": {
                "Request": Request.model_json_schema(
                    ref_template="#/components/schemas/Request/$defs/{model}"
                ),
                "Verification": VERIFICATION,
                "DeploymentRequest": DeploymentRequest.model_json_schema(),
                "Deployment": DEPLOYMENT,
                "Anomaly": ANOMALY,
                "Service": SERVICE,
                "ServiceDetail": {
                    "allOf": [
                        {"$ref": "#/components/schemas/Service"},
                        {
                            "type": "object",
                            "properties": {"metrics": {"type": "array", "items": METRIC}},
                        },
                    ]
                },
            },
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "basic": {"type": "http", "scheme": "basic"},
            },
        },
        "paths": {
            "/api/v1/verifications": {
                "post": {
                    "summary": "start a verification (idempotent with key)",
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Request"}}},
                    },
                    "responses": {
                        "201": _json(one, "created"),
                        "200": _json(one, "a verification with this key exists"),
                        "400": ERROR,
                        "401": ERROR,
                        "413": ERROR,
                        "415": ERROR,
                        "503": ERROR,
                    },
                },
                "get": {
                    "summary": "list verifications",
                    "parameters": [{"name": "service", "in": "query", "schema": {"type": "string"}}],
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "properties": {"verifications": {"type": "array", "items": one}},
                            },
                            "the verifications",
                        )
                    },
                },
            },
            "/api/v1/verifications/{id}": {
                "get": {
                    "summary": "one verification; wait_s long-polls until its status or verdict changes",
                    "parameters": [
                        ident,
                        {"name": "wait_s", "in": "query", "schema": {"type": "number", "minimum": 0}},
                    ],
                    "responses": {"200": _json(one, "the verification"), "400": ERROR, "404": ERROR},
                },
                "delete": {
                    "summary": "cancel a running verification",
                    "parameters": [ident],
                    "responses": {"200": _json(one, "cancelled"), "404": ERROR, "409": ERROR},
                },
            },
            "/api/v1/flagger/{kind}": {
                "post": {
                    "summary": (
                        "Flagger webhook: rollout, pre-rollout, confirm-*, post-rollout, rollback; "
                        "event records a deployment when Flagger detects a new revision"
                    ),
                    "parameters": [
                        {"name": "kind", "in": "path", "required": True, "schema": {"type": "string"}}
                    ],
                    "responses": {
                        "200": {"description": "go on (a check) or roll back (rollback)"},
                        "409": ERROR,
                        "412": ERROR,
                        "400": ERROR,
                        "404": ERROR,
                    },
                }
            },
            "/api/v1/services": {
                "get": {
                    "summary": "every service with live series: health, since, open anomalies, instances",
                    "responses": {
                        "200": _json(
                            {"type": "array", "items": {"$ref": "#/components/schemas/Service"}},
                            "the services",
                        ),
                        "400": ERROR,
                        "401": ERROR,
                        "503": ERROR,
                    },
                }
            },
            "/api/v1/services/{service}": {
                "get": {
                    "summary": "one service, with each series' state and evidence",
                    "parameters": [
                        {"name": "service", "in": "path", "required": True, "schema": {"type": "string"}}
                    ],
                    "responses": {
                        "200": _json({"$ref": "#/components/schemas/ServiceDetail"}, "the service"),
                        "400": ERROR,
                        "401": ERROR,
                        "404": ERROR,
                        "503": ERROR,
                    },
                }
            },
            "/api/v1/anomalies": {
                "get": {
                    "summary": "open and resolved anomalies, oldest first",
                    "parameters": [
                        {"name": "service", "in": "query", "schema": {"type": "string"}},
                        {"name": "state", "in": "query", "schema": {"enum": ["open", "resolved"]}},
                    ],
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "properties": {
                                    "anomalies": {
                                        "type": "array",
                                        "items": {"$ref": "#/components/schemas/Anomaly"},
                                    }
                                },
                            },
                            "the anomalies",
                        ),
                        "400": ERROR,
                        "401": ERROR,
                        "503": ERROR,
                    },
                }
            },
            "/api/v1/deployments": {
                "post": {
                    "summary": "record a deployment of a service (Argo Rollouts notifications send this)",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/DeploymentRequest"}}
                        },
                    },
                    "responses": {
                        "201": _json(deployment, "recorded"),
                        "200": _json(deployment, "this version of the service was recorded before"),
                        "400": ERROR,
                        "415": ERROR,
                    },
                },
                "get": {
                    "summary": "the newest deployments of every service, or of one",
                    "parameters": [{"name": "service", "in": "query", "schema": {"type": "string"}}],
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "properties": {"deployments": {"type": "array", "items": deployment}},
                            },
                            "the deployments, oldest first per service",
                        )
                    },
                },
            },
            "/-/healthy": {"get": {"responses": {"200": {"description": "the process is up"}}}},
            "/-/ready": {
                "get": {
                    "responses": {
                        "200": {"description": "jobs, status and verdicts read from Kafka"},
                        "503": ERROR,
                    }
                }
            },
            "/metrics": {"get": {"responses": {"200": {"description": "Prometheus exposition"}}}},
        },
    }
