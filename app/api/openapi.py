"""What the generated OpenAPI document cannot see for itself: the webhooks read their bodies
raw (one object or an array, validated by app.payloads' models) and an MO's GET form is its
query string, so their request schemas are written here, from the same models."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from app.payloads import Mo, MtLink

KEY_PARAMETERS: list[dict[str, Any]] = [
    {
        "name": "key",
        "in": "query",
        "required": False,
        "schema": {"type": "string"},
        "description": "Webhook key (or send it as X-Webhook-Key, or as a basic-auth password)",
    },
    {
        "name": "X-Webhook-Key",
        "in": "header",
        "required": False,
        "schema": {"type": "string"},
        "description": "Webhook key",
    },
]


def body_schema(model: type[BaseModel], max_items: int = 1000) -> dict[str, Any]:
    ref = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {
        "parameters": KEY_PARAMETERS,
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "oneOf": [ref, {"type": "array", "items": ref, "maxItems": max_items}]
                    }
                }
            },
        },
    }


def query_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """A model field's schema as a query parameter: its non-null form (absent means null)."""
    branches = [s for s in schema.get("anyOf", [schema]) if s.get("type") != "null"]
    return {k: v for k, v in branches[0].items() if k not in ("title", "default")}


def mo_query_parameters() -> list[dict[str, Any]]:
    """The GET form of an MO, documented from the same models that validate it."""
    parameters = []
    for name, schema in Mo.model_json_schema(by_alias=True)["properties"].items():
        if name != "mt":
            parameters.append(
                {
                    "name": name,
                    "in": "query",
                    "required": name == "id",
                    "schema": query_schema(schema),
                }
            )
    for name, schema in MtLink.model_json_schema(by_alias=True)["properties"].items():
        parameters.append(
            {
                "name": f"mt.{name}",
                "in": "query",
                "required": False,
                "schema": query_schema(schema),
                "description": f"The MT this MO answers: its {name} (or mt{name[:1].upper()}"
                f"{name[1:]})",
            }
        )
    return parameters
