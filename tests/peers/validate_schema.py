"""Validates JSON documents against the repository's JSON Schemas (docs/schemas/) with the
reference `jsonschema` implementation.

usage: validate_schema.py SCHEMA_DIR SCHEMA_FILE < documents.jsonl
One document per input line. Prints one line per invalid document ("<line>: <path>: <message>")
and exits 1 if any is invalid, 0 otherwise.
"""
import json
import pathlib
import sys

import jsonschema
from referencing import Registry, Resource


def main() -> int:
    schema_dir = pathlib.Path(sys.argv[1])
    registry = Registry()
    schemas = {}
    for path in sorted(schema_dir.glob("*.schema.json")):
        schema = json.loads(path.read_text())
        schemas[path.name] = schema
        registry = registry.with_resource(schema["$id"], Resource.from_contents(schema))
    schema = schemas[sys.argv[2]]
    jsonschema.Draft7Validator.check_schema(schema)
    validator = jsonschema.Draft7Validator(schema, registry=registry)
    bad = 0
    count = 0
    for n, line in enumerate(sys.stdin, 1):
        if not line.strip():
            continue
        count += 1
        for err in validator.iter_errors(json.loads(line)):
            bad += 1
            where = "/".join(str(p) for p in err.absolute_path) or "(root)"
            print(f"{n}: {where}: {err.message}")
    if count == 0:
        print("no documents given")
        return 1
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
