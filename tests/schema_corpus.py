"""JSON Schemas for the structured-output tests (tests/test_constraints.py).

Every schema here is one llama.cpp's converter is expected to express. They
are written so that a *random* model can finish them: strings are bounded
(maxLength, enum, const, a format or an anchored pattern), arrays have
maxItems, objects list their properties (no free-form extra keys). A real
model ends an unbounded string by itself; a random one almost never samples
the closing quote among thousands of tokens, so the corpus does not ask it to.

UNSUPPORTED holds schemas the converter refuses, each with a word its
message must contain.
"""

from __future__ import annotations

from typing import Any

S = {"type": "string", "maxLength": 8}  # a short string


def _obj(props: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    return {"type": "object", "properties": props, "required": list(props) if required is None else required,
            "additionalProperties": False}


CORPUS: dict[str, Any] = {
    # scalars
    "boolean": {"type": "boolean"},
    "null": {"type": "null"},
    "integer": {"type": "integer"},
    "integer-min": {"type": "integer", "minimum": 0},
    "integer-range": {"type": "integer", "minimum": -5, "maximum": 5},
    "integer-exclusive": {"type": "integer", "exclusiveMinimum": 0, "exclusiveMaximum": 100},
    "integer-big-range": {"type": "integer", "minimum": 1000, "maximum": 99999},
    "number": {"type": "number"},
    "short-string": S,
    "string-min-max": {"type": "string", "minLength": 2, "maxLength": 5},
    "string-enum": {"type": "string", "enum": ["red", "green", "blue"]},
    "enum-mixed": {"enum": ["a", 1, True, None]},
    "const-string": {"const": "fixed"},
    "const-object": {"const": {"k": [1, 2]}},
    "date": {"type": "string", "format": "date"},
    "time": {"type": "string", "format": "time"},
    "date-time": {"type": "string", "format": "date-time"},
    "uuid": {"type": "string", "format": "uuid"},
    "pattern-digits": {"type": "string", "pattern": "^[0-9]{3}-[0-9]{4}$"},
    "pattern-code": {"type": "string", "pattern": "^[A-Z]{2}[0-9]{2,4}$"},
    "pattern-alt": {"type": "string", "pattern": "^(yes|no|maybe)$"},
    "pattern-hex": {"type": "string", "pattern": "^#[0-9a-f]{6}$"},
    # arrays
    "array-ints": {"type": "array", "items": {"type": "integer"}, "maxItems": 4},
    "array-min-max": {"type": "array", "items": {"type": "boolean"}, "minItems": 2, "maxItems": 3},
    "array-exact": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 9},
                    "minItems": 3, "maxItems": 3},
    "array-strings": {"type": "array", "items": S, "maxItems": 3},
    "array-enum": {"type": "array", "items": {"enum": ["x", "y"]}, "minItems": 1, "maxItems": 4},
    "array-empty": {"type": "array", "items": {"type": "integer"}, "maxItems": 0},
    "tuple": {"type": "array", "prefixItems": [{"type": "integer"}, S, {"type": "boolean"}]},
    "array-of-objects": {"type": "array", "items": _obj({"id": {"type": "integer"}, "ok": {"type": "boolean"}}),
                         "maxItems": 3},
    "array-nested": {"type": "array", "items": {"type": "array", "items": {"type": "integer"}, "maxItems": 2},
                     "maxItems": 2},
    # objects
    "object-one": _obj({"name": S}),
    "object-typed": _obj({"name": S, "age": {"type": "integer", "minimum": 0, "maximum": 150},
                          "member": {"type": "boolean"}}),
    "object-optional": _obj({"a": {"type": "integer"}, "b": S, "c": {"type": "boolean"}}, required=["a"]),
    "object-all-optional": _obj({"x": {"type": "integer"}, "y": {"type": "integer"}}, required=[]),
    "object-nested": _obj({"user": _obj({"id": {"type": "integer"}, "tag": S}),
                           "active": {"type": "boolean"}}),
    "object-deep": _obj({"a": _obj({"b": _obj({"c": _obj({"d": {"type": "integer"}})})})}),
    "object-with-array": _obj({"tags": {"type": "array", "items": S, "maxItems": 3},
                               "count": {"type": "integer", "minimum": 0}}),
    "object-enum-fields": _obj({"color": {"enum": ["red", "blue"]}, "size": {"enum": ["S", "M", "L"]}}),
    "object-const-field": _obj({"kind": {"const": "event"}, "n": {"type": "integer"}}),
    "object-formats": _obj({"day": {"type": "string", "format": "date"}, "id": {"type": "string", "format": "uuid"}}),
    "object-nullable": _obj({"v": {"type": ["integer", "null"]}}),
    "object-number-bounds": _obj({"p": {"type": "number"}, "q": {"type": "integer", "minimum": 10, "maximum": 20}}),
    "object-pattern-field": _obj({"zip": {"type": "string", "pattern": "^[0-9]{5}$"}}),
    "object-many-fields": _obj({f"f{i}": {"type": "integer", "minimum": 0, "maximum": 9} for i in range(8)}),
    # combinators
    "anyof-scalars": {"anyOf": [{"type": "integer"}, {"type": "boolean"}]},
    "anyof-objects": {"anyOf": [_obj({"cat": S}), _obj({"dog": {"type": "integer"}})]},
    "oneof-enums": {"oneOf": [{"const": "a"}, {"const": "b"}, {"type": "integer", "minimum": 0, "maximum": 3}]},
    "anyof-null": {"anyOf": [{"type": "null"}, _obj({"v": {"type": "boolean"}})]},
    "allof-merge": {"allOf": [{"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]},
                              {"properties": {"b": {"type": "boolean"}}, "required": ["b"]}]},
    "type-list": {"type": ["integer", "boolean", "null"]},
    # references
    "ref-defs": {"$defs": {"pt": _obj({"x": {"type": "integer"}, "y": {"type": "integer"}})},
                 "type": "object", "properties": {"a": {"$ref": "#/$defs/pt"}, "b": {"$ref": "#/$defs/pt"}},
                 "required": ["a", "b"], "additionalProperties": False},
    "ref-definitions": {"definitions": {"c": {"enum": ["r", "g"]}},
                        "type": "array", "items": {"$ref": "#/definitions/c"}, "maxItems": 3},
    # realistic
    "extraction": _obj({"title": {"type": "string", "maxLength": 12},
                        "year": {"type": "integer", "minimum": 1900, "maximum": 2100},
                        "genres": {"type": "array", "items": {"enum": ["drama", "comedy", "sci-fi"]},
                                   "minItems": 1, "maxItems": 2},
                        "rating": {"type": "number"}}),
    "classification": _obj({"label": {"enum": ["positive", "negative", "neutral"]},
                            "confidence": {"type": "integer", "minimum": 0, "maximum": 100}}),
    "calendar-event": _obj({"date": {"type": "string", "format": "date"},
                            "start": {"type": "string", "format": "time"},
                            "attendees": {"type": "array", "items": {"type": "string", "maxLength": 6},
                                          "maxItems": 2}}, required=["date"]),
}

#: Schemas the converter cannot express, with a word its error must contain.
UNSUPPORTED: dict[str, tuple[Any, str]] = {
    "unanchored-pattern": ({"type": "string", "pattern": "[a-z]+"}, "anchored"),
    "bad-ref": ({"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}}, "missing"),
    "false-items": ({"type": "array", "prefixItems": [{"type": "integer"}], "items": False}, "#/items"),
    "unsupported-escape": ({"type": "string", "pattern": "^\\p{L}+$"}, "unsupported escape"),
    # keywords the converter would skip without a word: refused, naming the path
    "uniqueItems": ({"type": "array", "items": {"type": "integer"}, "uniqueItems": True}, "#: 'uniqueItems'"),
    "multipleOf": ({"type": "object", "properties": {"n": {"type": "integer", "multipleOf": 5}}},
                   "#/properties/n: 'multipleOf'"),
    "not": ({"not": {"type": "string"}}, "'not'"),
    "if-then": ({"if": {"type": "integer"}, "then": {"minimum": 0}}, "'if'"),
    "contains": ({"type": "array", "contains": {"const": 1}}, "'contains'"),
    "minProperties": ({"type": "object", "minProperties": 2}, "'minProperties'"),
    "format-email": ({"type": "string", "format": "email"}, "#/format: format 'email'"),
    "number-bounds": ({"type": "number", "minimum": 0.5}, "integers only"),
}
