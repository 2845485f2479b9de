"""The OpenAPI 3 document of the legacy API, served at /api/ha/openapi.json and fuzzed in the tests."""

from __future__ import annotations

from typing import Any

Obj = dict[str, Any]


def _ref(name: str) -> Obj:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: Obj) -> Obj:
    return {"content": {"application/json": {"schema": schema}}}


def _ok(properties: Obj, description: str) -> Obj:
    schema = {
        "type": "object",
        "required": ["success"],
        "properties": {"success": {"type": "boolean", "enum": [True]}, **properties},
    }
    return {"description": description, **_json(schema)}


ERROR_CODES = {
    "400": "Malformed request",
    "401": "Missing or invalid bearer token",
    "403": "Not allowed",
    "404": "No such cluster, node or member",
    "409": "Conflict: duplicate, request in progress, no database, or a host that several nodes or members share",
    "422": "Invalid fields, or the operator refused the request",
    "503": "The Kubernetes API or the database is unavailable",
    "504": "The operator did not answer in time",
}


def _operation(summary: str, ok: Obj, *, body: str | None = None, codes: tuple[str, ...] = ()) -> Obj:
    responses: Obj = {"200": ok}
    for code in ("401", "403", "404", "503", *codes):
        responses[code] = {"description": ERROR_CODES[code], **_json(_ref("Error"))}
    operation: Obj = {"summary": summary, "responses": responses, "security": [{"bearer": []}]}
    if body is not None:
        operation["requestBody"] = {"required": True, **_json(_ref(body))}
    return operation


def document() -> Obj:
    nullable_int = {"type": ["integer", "null"]}
    nullable_str = {"type": ["string", "null"]}
    node = {
        "type": "object",
        "required": ["name", "hostname", "ip", "port", "priority", "role", "status"],
        "properties": {
            "id": nullable_int,
            "name": {"type": "string"},
            "hostname": {"type": "string"},
            "ip": {"type": "string"},
            "port": {"type": "integer"},
            "priority": {"type": "integer"},
            "weight": {"type": "integer"},
            "role": {"type": "string", "enum": ["primary", "secondary"]},
            "status": {"type": "string", "enum": ["healthy", "unhealthy", "unknown", "maintenance"]},
            "lastHealthCheck": nullable_str,
            "latencyMs": {"type": ["number", "null"]},
            "message": nullable_str,
        },
    }
    slave = {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "host": nullable_str,
            "role": {"type": "string"},
            "reachable": {"type": "boolean"},
            "ioRunning": {"type": ["boolean", "null"]},
            "sqlRunning": {"type": ["boolean", "null"]},
            "lagSeconds": nullable_int,
        },
    }
    database = {
        "type": ["object", "null"],
        "properties": {
            "name": {"type": "string"},
            "master": nullable_str,
            "masterMember": nullable_str,
            "phase": nullable_str,
            "reason": nullable_str,
            "slaves": {"type": "array", "items": _ref("Slave")},
        },
    }
    cluster = {
        "type": "object",
        "required": ["name", "totalNodes", "healthyNodes", "primaryNode"],
        "properties": {
            "name": {"type": "string"},
            "totalNodes": {"type": "integer"},
            "healthyNodes": {"type": "integer"},
            "primaryNode": {
                "type": ["object", "null"],
                "properties": {"id": nullable_int, "hostname": {"type": "string"}, "status": {"type": "string"}},
            },
            "phase": nullable_str,
            "reason": nullable_str,
            "lastFailover": {"type": ["object", "null"]},
        },
    }
    history = {"type": "array", "items": {"type": "object"}}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "whm-ha legacy HA API",
            "version": "1.0.0",
            "description": "The /api/ha endpoints legacy tools use, served over the whm-ha custom resources.",
        },
        "paths": {
            "/api/ha/status": {
                "get": _operation(
                    "Cluster and database status",
                    _ok({"cluster": _ref("Cluster"), "database": _ref("Database")}, "Status"),
                )
            },
            "/api/ha/nodes": {
                "get": _operation("List nodes", _ok({"nodes": {"type": "array", "items": _ref("Node")}}, "Nodes")),
                "post": {
                    **_operation(
                        "Add a node",
                        _ok({"node": _ref("Node")}, "Created"),
                        body="NewNode",
                        codes=("400", "409", "422"),
                    ),
                    "responses": {
                        "201": _ok({"node": _ref("Node")}, "Created"),
                        **{
                            c: {"description": ERROR_CODES[c], **_json(_ref("Error"))}
                            for c in ("400", "401", "403", "404", "409", "422", "503")
                        },
                    },
                },
            },
            "/api/ha/nodes/{id}": {
                "delete": {
                    **_operation(
                        "Remove a node by name, numeric id, hostname or address",
                        _ok({"removed": _ref("Node")}, "Removed"),
                        codes=("409",),
                    ),
                    "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}],
                }
            },
            "/api/ha/failover": {
                "post": _operation(
                    "Switch the primary node (waits for the operator)",
                    _ok({"primaryNode": {"type": "string"}, "result": {"type": "object"}}, "Done"),
                    body="FailoverRequest",
                    codes=("400", "409", "422", "504"),
                )
            },
            "/api/ha/failover/history": {
                "get": _operation("Failover history", _ok({"history": history, "database": history}, "History"))
            },
            "/api/ha/database/replication": {
                "get": _operation(
                    "Replication topology",
                    _ok(
                        {
                            "master": nullable_str,
                            "slaves": {"type": "array", "items": _ref("Slave")},
                            "members": {"type": "array"},
                        },
                        "Replication",
                    ),
                )
            },
            "/api/ha/database/promote": {
                "post": _operation(
                    "Promote a replica (waits for the operator)",
                    _ok(
                        {
                            "master": {"type": "string"},
                            "masterMember": {"type": "string"},
                            "result": {"type": "object"},
                        },
                        "Promoted",
                    ),
                    body="PromoteRequest",
                    codes=("400", "409", "422", "504"),
                )
            },
            "/api/ha/loadbalancer/stats": {
                "get": _operation(
                    "Live proxy statistics", _ok({"proxies": {"type": "array", "items": {"type": "object"}}}, "Stats")
                )
            },
            "/api/ha/loadbalancer/reload": {
                "post": _operation(
                    "Make the proxies re-read their configuration", _ok({"reload": {"type": "string"}}, "Requested")
                )
            },
            "/api/ha/sessions/stats": {
                "get": _operation(
                    "Shared session statistics",
                    _ok(
                        {
                            "stats": {
                                "type": "object",
                                "properties": {
                                    k: {"type": "integer"} for k in ("total", "active", "expired", "activeUsers")
                                },
                            }
                        },
                        "Stats",
                    ),
                    codes=("409",),
                )
            },
            "/api/ha/sessions/cleanup": {
                "post": _operation(
                    "Delete expired sessions", _ok({"deleted": {"type": "integer"}}, "Deleted"), codes=("409",)
                )
            },
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Node": node,
                "Slave": slave,
                "Database": database,
                "Cluster": cluster,
                "NewNode": {
                    "type": "object",
                    "required": ["hostname", "ip"],
                    "additionalProperties": False,
                    "properties": {
                        "hostname": {"type": "string", "minLength": 1, "maxLength": 253},
                        "ip": {"type": "string", "minLength": 1, "maxLength": 253},
                        "port": {"type": "integer", "minimum": 1, "maximum": 65535},
                        "priority": {"type": "integer", "minimum": 0, "maximum": 1000},
                        "weight": {"type": "integer", "minimum": 0, "maximum": 1000},
                        "name": {"type": "string"},
                    },
                },
                "FailoverRequest": {
                    "type": "object",
                    "required": ["targetNodeId"],
                    "additionalProperties": False,
                    "properties": {
                        "targetNodeId": {
                            "type": ["integer", "string"],
                            "description": "node id, name, or a hostname or address no other node shares",
                        }
                    },
                },
                "PromoteRequest": {
                    "type": "object",
                    "required": ["slaveHost"],
                    "additionalProperties": False,
                    "properties": {
                        "slaveHost": {
                            "type": "string",
                            "description": "member name, host:port, or a host no other member shares",
                        },
                        "force": {"type": "boolean"},
                    },
                },
                "Error": {
                    "type": "object",
                    "required": ["success", "error"],
                    "properties": {
                        "success": {"type": "boolean", "enum": [False]},
                        "error": {
                            "type": "object",
                            "required": ["code", "message"],
                            "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
                        },
                    },
                },
            },
        },
    }
