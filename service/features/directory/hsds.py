"""Open Referral HSDS 3.0 tables to FHIR directory resources.

A package is a folder of HSDS tables, each as CSV (``services.csv``, the Tabular Data Package
form, with or without its ``datapackage.json``) or as a JSON array of rows (``services.json``).
Tables read: organizations, services, locations, service_at_location, addresses, phones,
schedules, languages, taxonomy_terms, taxonomies and attributes. Others are ignored.

Mapping (one FHIR resource per HSDS object, its id derived from the source and the HSDS id):

- organization -> Organization (name, website, email, phones);
- location -> Location (name, description, physical address, latitude/longitude as
  ``position``, phones; ``managingOrganization`` from ``organization_id``);
- service -> HealthcareService (``providedBy``; ``active`` from status; ``type`` from its
  taxonomy terms: a term whose code is one of our service codes becomes that code, any other
  keeps its taxonomy; ``eligibility`` from eligibility_description and minimum/maximum_age;
  ``communication`` from its languages; ``availableTime`` from weekly schedules; the sites of
  its service_at_location rows as ``location``).

Every problem is reported with its file, row and field; nothing is written when there is one.
"""

from __future__ import annotations

import csv
import json
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from service.fhir.codes import HANDOFF, SERVICE_SYSTEM
from service.fhir.service_codes import directory_codes, service_coding

TABLES = (
    "organizations",
    "services",
    "locations",
    "service_at_location",
    "addresses",
    "phones",
    "schedules",
    "languages",
    "taxonomy_terms",
    "taxonomies",
    "attributes",
)
SOURCE_PATTERN = re.compile(r"^[a-z0-9][a-z0-9-]{0,39}$")
_NAMESPACE = uuid.UUID("0d5f7a2e-6c1b-4a7e-9a55-3c1f4b8e2d10")
BCP47 = "urn:ietf:bcp:47"
SERVICE_STATUSES = {"active", "inactive", "defunct", "temporarily closed"}
_DAYS = {"MO": "mon", "TU": "tue", "WE": "wed", "TH": "thu", "FR": "fri", "SA": "sat", "SU": "sun"}
_TIME = re.compile(r"^([01][0-9]|2[0-3]):([0-5][0-9])(:[0-5][0-9])?")


def identifier_system(source: str, kind: str) -> str:
    """The identifier system of one source's HSDS ids of one object kind."""
    return f"{HANDOFF}/hsds/{source}/{kind}"


def resource_id(source: str, kind: str, hsds_id: str) -> str:
    """A stable FHIR id for an HSDS object: the same source and id give the same resource."""
    return str(uuid.uuid5(_NAMESPACE, f"{source}\x1f{kind}\x1f{hsds_id}"))


@dataclass(frozen=True)
class Row:
    file: str
    number: int  # 1-based data row (CSV: the header is line 1, so row n is line n + 1)
    values: dict[str, Any]

    def where(self, field_name: str) -> str:
        return f"{self.file}, row {self.number}, field {field_name}"


class PackageError(Exception):
    """A package that cannot be imported; ``problems`` name file, row and field."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__(f"{len(problems)} problem(s) in the HSDS package")
        self.problems = problems


@dataclass
class Package:
    tables: dict[str, list[Row]] = field(default_factory=dict)

    def rows(self, table: str) -> list[Row]:
        return self.tables.get(table, [])

    @property
    def row_count(self) -> int:
        return sum(len(rows) for rows in self.tables.values())


def _table_files(path: Path) -> dict[str, Path]:
    """table name -> file, from ``datapackage.json``'s resources or the files present."""
    folder = path.parent if path.is_file() else path
    found: dict[str, Path] = {}
    descriptor = folder / "datapackage.json"
    if descriptor.is_file():
        try:
            resources = json.loads(descriptor.read_text(encoding="utf-8")).get("resources", [])
        except (ValueError, AttributeError) as exc:
            raise PackageError(
                [f"datapackage.json: not a Data Package descriptor ({exc})"]
            ) from exc
        for resource in resources if isinstance(resources, list) else []:
            name, rel = resource.get("name"), resource.get("path")
            if isinstance(name, str) and isinstance(rel, str) and name in TABLES:
                found[name] = folder / rel
    for table in TABLES:
        for suffix in (".csv", ".json"):
            candidate = folder / f"{table}{suffix}"
            if table not in found and candidate.is_file():
                found[table] = candidate
    return found


def read_package(path: Path, progress: Callable[[int], None] | None = None) -> Package:
    """Read every known table of the package at ``path`` (a folder or its datapackage.json)."""
    if not path.exists():
        raise PackageError([f"{path}: no such file or folder"])
    files = _table_files(path)
    if "organizations" not in files or "services" not in files:
        raise PackageError(
            [
                f"{path}: an HSDS package needs at least organizations and services tables "
                "(organizations.csv or organizations.json, services.csv or services.json)"
            ]
        )
    package = Package()
    problems: list[str] = []
    for table, file in files.items():
        try:
            rows = list(_read_table(file))
        except (OSError, UnicodeDecodeError, ValueError, csv.Error) as exc:
            problems.append(f"{file.name}: cannot be read ({exc})")
            continue
        package.tables[table] = rows
        if progress is not None:
            progress(len(rows))
    if problems:
        raise PackageError(problems)
    return package


def _read_table(file: Path) -> Iterator[Row]:
    if file.suffix == ".json":
        data = json.loads(file.read_text(encoding="utf-8"))
        if not isinstance(data, list):
            raise ValueError("a JSON table is an array of objects")
        for number, item in enumerate(data, start=1):
            if not isinstance(item, dict):
                raise ValueError(f"item {number} is not an object")
            yield Row(file.name, number, item)
        return
    with file.open(newline="", encoding="utf-8-sig") as handle:
        for number, values in enumerate(csv.DictReader(handle), start=1):
            yield Row(
                file.name,
                number,
                {
                    k.strip(): (v.strip() if isinstance(v, str) else v)
                    for k, v in values.items()
                    if k
                },
            )


def _text(row: Row, name: str) -> str | None:
    value = row.values.get(name)
    if value is None or value == "":
        return None
    return str(value)


@dataclass
class Mapped:
    """The FHIR resources a package maps to, by type and id, and the problems found."""

    resources: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


class _Mapper:
    def __init__(self, package: Package, source: str) -> None:
        self.package = package
        self.source = source
        self.out = Mapped()
        self.ids: dict[str, dict[str, Row]] = {}

    def problem(self, row: Row, field_name: str, message: str) -> None:
        self.out.problems.append(f"{row.where(field_name)}: {message}")

    def index(self, table: str) -> dict[str, Row]:
        """The table's rows by id; missing and repeated ids are problems."""
        by_id: dict[str, Row] = {}
        for row in self.package.rows(table):
            hsds_id = _text(row, "id")
            if hsds_id is None:
                self.problem(row, "id", "is required")
            elif hsds_id in by_id:
                self.problem(row, "id", f"'{hsds_id}' is also row {by_id[hsds_id].number}")
            else:
                by_id[hsds_id] = row
        self.ids[table] = by_id
        return by_id

    def required(self, row: Row, name: str) -> str | None:
        value = _text(row, name)
        if value is None:
            self.problem(row, name, "is required")
        return value

    def link(self, row: Row, name: str, table: str, *, required: bool) -> str | None:
        """A foreign key: the id must be a row of ``table``."""
        value = _text(row, name)
        if value is None:
            if required:
                self.problem(row, name, "is required")
            return None
        if value not in self.ids.get(table, {}):
            self.problem(row, name, f"'{value}' is not the id of a row of {table}")
            return None
        return value

    def number(self, row: Row, name: str, low: float, high: float) -> float | None:
        text = _text(row, name)
        if text is None:
            return None
        try:
            value = float(text)
        except ValueError:
            self.problem(row, name, f"'{text}' is not a number")
            return None
        if not low <= value <= high:
            self.problem(row, name, f"{value:g} is outside {low:g} to {high:g}")
            return None
        return value

    def ref(self, kind: str, hsds_id: str) -> dict[str, str]:
        rtype = {"organization": "Organization", "location": "Location"}[kind]
        return {"reference": f"{rtype}/{resource_id(self.source, kind, hsds_id)}"}

    def base(self, rtype: str, kind: str, hsds_id: str) -> dict[str, Any]:
        return {
            "resourceType": rtype,
            "id": resource_id(self.source, kind, hsds_id),
            "identifier": [{"system": identifier_system(self.source, kind), "value": hsds_id}],
        }

    # --- children ------------------------------------------------------------------------

    def children(self, table: str, key: str) -> dict[str, list[Row]]:
        out: dict[str, list[Row]] = {}
        for row in self.package.rows(table):
            value = _text(row, key)
            if value is not None:
                out.setdefault(value, []).append(row)
        return out

    def telecom(self, phones: list[Row], website: str | None, email: str | None) -> list[Any]:
        out: list[dict[str, Any]] = []
        for row in phones:
            number = self.required(row, "number")
            if number:
                extension = _text(row, "extension")
                out.append(
                    {"system": "phone", "value": number + (f" x{extension}" if extension else "")}
                )
        if website:
            out.append({"system": "url", "value": website})
        if email:
            out.append({"system": "email", "value": email})
        return out

    # --- objects ---------------------------------------------------------------------------

    def run(self) -> Mapped:
        organizations = self.index("organizations")
        locations = self.index("locations")
        services = self.index("services")
        self.index("service_at_location")
        terms = self.index("taxonomy_terms")
        taxonomies = self.index("taxonomies")
        phones = {
            k: self.children("phones", k) for k in ("organization_id", "location_id", "service_id")
        }
        for hsds_id, row in organizations.items():
            body = self.base("Organization", "organization", hsds_id)
            body.update(active=True, name=self.required(row, "name"))
            telecom = self.telecom(
                phones["organization_id"].get(hsds_id, []),
                _text(row, "website") or _text(row, "url"),
                _text(row, "email"),
            )
            if telecom:
                body["telecom"] = telecom
            self.put(body)
        addresses = self.children("addresses", "location_id")
        for hsds_id, row in locations.items():
            self.location(hsds_id, row, addresses.get(hsds_id, []), phones["location_id"])
        sites: dict[str, list[str]] = {}
        for row in self.package.rows("service_at_location"):
            service = self.link(row, "service_id", "services", required=True)
            site = self.link(row, "location_id", "locations", required=True)
            if service and site:
                sites.setdefault(service, []).append(site)
        languages = self.children("languages", "service_id")
        schedules = self.children("schedules", "service_id")
        attributes = self.children("attributes", "link_id")
        for hsds_id, row in services.items():
            self.service(
                hsds_id,
                row,
                sites=sites.get(hsds_id, []),
                languages=languages.get(hsds_id, []),
                schedules=schedules.get(hsds_id, []),
                phones=phones["service_id"].get(hsds_id, []),
                types=[
                    self.term_coding(a, terms, taxonomies)
                    for a in attributes.get(hsds_id, [])
                    if (_text(a, "link_entity") or "service") == "service"
                ],
            )
        return self.out

    def put(self, body: dict[str, Any]) -> None:
        self.out.resources[(body["resourceType"], body["id"])] = body

    def location(
        self,
        hsds_id: str,
        row: Row,
        addresses: list[Row],
        phones: dict[str, list[Row]],
    ) -> None:
        body = self.base("Location", "location", hsds_id)
        body["status"] = "active"
        kind = _text(row, "location_type") or "physical"
        if kind not in ("physical", "postal", "virtual"):
            self.problem(row, "location_type", f"'{kind}' is not physical, postal or virtual")
        name = _text(row, "name")
        if name:
            body["name"] = name
        description = _text(row, "description")
        if description:
            body["description"] = description
        physical = [a for a in addresses if (_text(a, "address_type") or "physical") == "physical"]
        for address in (physical or addresses)[:1]:
            body["address"] = self.address(address)
        if (_text(row, "latitude") is None) != (_text(row, "longitude") is None):
            missing = "longitude" if _text(row, "longitude") is None else "latitude"
            self.problem(row, missing, "is required when the other coordinate is given")
        else:
            lat = self.number(row, "latitude", -90, 90)
            lon = self.number(row, "longitude", -180, 180)
            if lat is not None and lon is not None:
                body["position"] = {"latitude": lat, "longitude": lon}
        org = self.link(row, "organization_id", "organizations", required=False)
        if org:
            body["managingOrganization"] = self.ref("organization", org)
        telecom = self.telecom(phones.get(hsds_id, []), _text(row, "url"), None)
        if telecom:
            body["telecom"] = telecom
        self.put(body)

    def address(self, row: Row) -> dict[str, Any]:
        out: dict[str, Any] = {"use": "work"}
        lines = [v for v in (_text(row, "address_1"), _text(row, "address_2")) if v]
        if not lines:
            self.problem(row, "address_1", "is required")
        else:
            out["line"] = lines
        for hsds, fhir in (
            ("city", "city"),
            ("state_province", "state"),
            ("postal_code", "postalCode"),
            ("country", "country"),
        ):
            value = self.required(row, hsds)
            if value:
                out[fhir] = value
        return out

    def term_coding(
        self, attribute: Row, terms: dict[str, Row], taxonomies: dict[str, Row]
    ) -> dict[str, Any] | None:
        term_id = self.link(attribute, "taxonomy_term_id", "taxonomy_terms", required=True)
        if term_id is None:
            return None
        term = terms[term_id]
        code = _text(term, "code") or term_id
        if code.lower() in directory_codes():
            return service_coding(code.lower())
        taxonomy = taxonomies.get(_text(term, "taxonomy_id") or "")
        system = (_text(taxonomy, "uri") if taxonomy else None) or identifier_system(
            self.source, "taxonomy"
        )
        if system == SERVICE_SYSTEM:
            self.problem(term, "code", f"'{code}' is not in {SERVICE_SYSTEM}")
            return None
        coding = {"system": system, "code": code}
        name = _text(term, "name")
        if name:
            coding["display"] = name
        return coding

    def service(
        self,
        hsds_id: str,
        row: Row,
        *,
        sites: list[str],
        languages: list[Row],
        schedules: list[Row],
        phones: list[Row],
        types: list[dict[str, Any] | None],
    ) -> None:
        body = self.base("HealthcareService", "service", hsds_id)
        status = self.required(row, "status")
        if status is not None and status not in SERVICE_STATUSES:
            self.problem(
                row, "status", f"'{status}' is not one of {', '.join(sorted(SERVICE_STATUSES))}"
            )
        body["active"] = status == "active"
        org = self.link(row, "organization_id", "organizations", required=True)
        if org:
            body["providedBy"] = self.ref("organization", org)
        codings = [c for c in types if c is not None]
        if codings:
            body["type"] = [{"coding": [c]} for c in codings]
        body["name"] = self.required(row, "name")
        description = _text(row, "description")
        if description:
            body["comment"] = description
        if sites:
            body["location"] = [self.ref("location", s) for s in dict.fromkeys(sites)]
        telecom = self.telecom(phones, _text(row, "url"), _text(row, "email"))
        if telecom:
            body["telecom"] = telecom
        eligibility = self.eligibility(row)
        if eligibility:
            body["eligibility"] = [eligibility]
        communication = [self.language(lang) for lang in languages]
        if any(communication):
            body["communication"] = [c for c in communication if c]
        times = [t for t in (self.schedule(s) for s in schedules) if t]
        if times:
            body["availableTime"] = times
        exceptions = "; ".join(
            d for s in schedules if (d := _text(s, "description") or _text(s, "notes"))
        )
        if exceptions:
            body["availabilityExceptions"] = exceptions
        self.put(body)

    def eligibility(self, row: Row) -> dict[str, Any] | None:
        text = _text(row, "eligibility_description")
        low = self.number(row, "minimum_age", 0, 150)
        high = self.number(row, "maximum_age", 0, 150)
        ages = None
        if low is not None and high is not None:
            ages = f"Ages {low:g} to {high:g}"
        elif low is not None:
            ages = f"Ages {low:g} and over"
        elif high is not None:
            ages = f"Ages up to {high:g}"
        if text is None and ages is None:
            return None
        out: dict[str, Any] = {}
        if text:
            out["code"] = {"text": text}
        if ages:
            out["comment"] = ages
        return out

    def language(self, row: Row) -> dict[str, Any] | None:
        code, name = _text(row, "code"), _text(row, "name")
        if code is None and name is None:
            self.problem(row, "code", "a language needs a code (ISO 639) or a name")
            return None
        if code is None:
            return {"text": name}
        if not re.fullmatch(r"[A-Za-z]{2,3}(-[A-Za-z0-9]{1,8})*", code):
            self.problem(row, "code", f"'{code}' is not an ISO 639 language code")
            return None
        coding: dict[str, Any] = {"system": BCP47, "code": code.lower()}
        if name:
            coding["display"] = name
        return {"coding": [coding]}

    def schedule(self, row: Row) -> dict[str, Any] | None:
        freq = (_text(row, "freq") or "").upper()
        if freq and freq not in ("WEEKLY", "MONTHLY"):
            self.problem(row, "freq", f"'{freq}' is not WEEKLY or MONTHLY")
            return None
        if freq == "MONTHLY":
            return None  # told in availabilityExceptions (its description)
        out: dict[str, Any] = {}
        days = []
        for part in (_text(row, "byday") or "").split(","):
            part = part.strip().upper()
            if not part:
                continue
            if part not in _DAYS:
                self.problem(row, "byday", f"'{part}' is not a weekly day (MO, TU, ... SU)")
                return None
            days.append(_DAYS[part])
        if days:
            out["daysOfWeek"] = days
        for hsds, fhir in (("opens_at", "availableStartTime"), ("closes_at", "availableEndTime")):
            text = _text(row, hsds)
            if text is None:
                continue
            match = _TIME.match(text)
            if match is None:
                self.problem(row, hsds, f"'{text}' is not a time (HH:MM)")
                return None
            out[fhir] = f"{match.group(1)}:{match.group(2)}{match.group(3) or ':00'}"
        if not out:
            return None
        if "availableStartTime" not in out and "availableEndTime" not in out:
            out["allDay"] = True
        return out


def map_package(package: Package, source: str) -> Mapped:
    """The FHIR resources of ``package``, or the problems that stop it from importing."""
    return _Mapper(package, source).run()
