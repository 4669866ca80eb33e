#!/usr/bin/env python3
"""Per-kind JSON schemas for kubeconform from an OpenAPI v2 document (the API server's /openapi/v2).

    hack/chart-schemas.py OPENAPI_V2_JSON OUT_DIR [CRD.json ...]

Writes OUT_DIR/<kind>-<group>-<version>.json (kubeconform's `{{ .ResourceKind }}{{ .KindSuffix }}.json`
naming) for every kind the document defines, and for every version of each CRD given (JSON
CustomResourceDefinitions of kinds the cluster does not serve). Each file holds the kind's schema and the definitions
it reaches, so recursive types stay finite. Objects with declared properties get
`additionalProperties: false` (kubeconform -strict), and `int-or-string` / Quantity accept numbers
and strings, as the API server does.
"""
import json
import sys
from pathlib import Path

REF = "#/definitions/"
NUMBER_OR_STRING = {
    "io.k8s.apimachinery.pkg.util.intstr.IntOrString": {"oneOf": [{"type": "string"}, {"type": "integer"}]},
    "io.k8s.apimachinery.pkg.api.resource.Quantity": {"oneOf": [{"type": "string"}, {"type": "number"}]},
}


def tighten(node):
    """Strict objects, number-or-string formats, recursively (in place)."""
    if isinstance(node, dict):
        if node.get("format") == "int-or-string":
            node.pop("type", None)
            node.pop("format", None)
            node["oneOf"] = [{"type": "string"}, {"type": "integer"}]
        if (
            "properties" in node
            and "additionalProperties" not in node
            and not node.get("x-kubernetes-preserve-unknown-fields")
        ):
            node["additionalProperties"] = False
        for v in node.values():
            tighten(v)
    elif isinstance(node, list):
        for v in node:
            tighten(v)


def refs(node, out):
    if isinstance(node, dict):
        r = node.get("$ref")
        if isinstance(r, str) and r.startswith(REF):
            out.add(r[len(REF):])
        for v in node.values():
            refs(v, out)
    elif isinstance(node, list):
        for v in node:
            refs(v, out)


def closure(defs, root):
    seen, todo = set(), [root]
    while todo:
        name = todo.pop()
        if name in seen or name not in defs:
            continue
        seen.add(name)
        found = set()
        refs(defs[name], found)
        todo.extend(found - seen)
    return seen


def main():
    doc = json.loads(Path(sys.argv[1]).read_text())
    out = Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    defs = doc["definitions"]
    for name, schema in NUMBER_OR_STRING.items():
        if name in defs:
            defs[name] = dict(schema)
    for schema in defs.values():
        tighten(schema)
    written = 0
    for name, schema in defs.items():
        for gvk in schema.get("x-kubernetes-group-version-kind", []):
            group = gvk.get("group", "").split(".")[0]
            suffix = f"-{group}-{gvk['version']}" if group else f"-{gvk['version']}"
            needed = closure(defs, name)
            standalone = {
                "$schema": "http://json-schema.org/draft-07/schema#",
                "$ref": REF + name,
                "definitions": {n: defs[n] for n in sorted(needed)},
            }
            (out / f"{gvk['kind'].lower()}{suffix}.json").write_text(json.dumps(standalone))
            written += 1
    for crd_file in sys.argv[3:]:
        crd = json.loads(Path(crd_file).read_text())
        group = crd["spec"]["group"].split(".")[0]
        kind = crd["spec"]["names"]["kind"].lower()
        for version in crd["spec"]["versions"]:
            schema = dict(version["schema"]["openAPIV3Schema"])
            tighten(schema)
            schema["$schema"] = "http://json-schema.org/draft-07/schema#"
            (out / f"{kind}-{group}-{version['name']}.json").write_text(json.dumps(schema))
            written += 1
    print(f"{written} kind schemas in {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
