"""Program measures for people without FHIR (/v1/measures): JSON and CSV."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Query
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from service.api.deps import AuditedRoute, ContextDep
from service.api.routes.v1_assessments import V1_ERRORS
from service.api.routes.v1_models import Day
from service.features.measures.definitions import STRATIFIERS
from service.features.measures.evaluate import MeasureQuery, evaluate
from service.features.measures.export import CSV_HEADER, report_csv

router = APIRouter(prefix="/v1", tags=["Program measures"], route_class=AuditedRoute)

CountOrMark = int | float | str


class _Closed(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Period(_Closed):
    from_: str = Field(alias="from", description="First day counted (UTC, inclusive)")
    to: str = Field(description="Last day counted (UTC, inclusive)")


class Suppression(_Closed):
    applied: bool
    min_cell: int = Field(description="Counts from 1 to min_cell - 1 are suppressed")
    shown_as: str = Field(description='How a suppressed count is shown, e.g. "<11"')


class Filters(_Closed):
    facility: str | None
    intercept: int | None


class Stratum(_Closed):
    stratifier: str
    value: str = Field(description='The stratum ("none" where the fact is not recorded)')
    display: str | None = Field(
        default=None, description="The facility's name (facility strata; null for others)"
    )
    denominator: CountOrMark | None
    numerator: CountOrMark | None
    rate: float | None
    median_hours: float | None


class MeasureResult(_Closed):
    id: str
    url: str = Field(description="The Measure's canonical URL")
    title: str
    group: Literal[
        "screening", "education", "naloxone", "referral", "contact", "treatment", "outcome"
    ]
    scoring: Literal["proportion", "count", "median"]
    unit: str
    denominator: CountOrMark | None = Field(description='int, "<11" when suppressed, or null')
    numerator: CountOrMark | None
    rate: float | None
    median_hours: float | None
    strata: list[Stratum]


class CascadeStep(_Closed):
    step: str
    label: str
    count: CountOrMark


_EXAMPLE_MEASURE: dict[str, Any] = {
    "id": "referral-accepted-before-release-treatment",
    "url": "https://handoff.dev/fhir/Measure/referral-accepted-before-release-treatment",
    "title": "Treatment referral accepted before release",
    "group": "referral",
    "scoring": "proportion",
    "unit": "releases",
    "denominator": 120,
    "numerator": 45,
    "rate": 0.375,
    "median_hours": None,
    "strata": [
        {
            "stratifier": "month",
            "value": "2026-11",
            "denominator": 120,
            "numerator": 45,
            "rate": 0.375,
            "median_hours": None,
        },
        {
            "stratifier": "facility",
            "value": "Location/county-jail-main",
            "display": "County Jail, Main Facility",
            "denominator": 80,
            "numerator": 31,
            "rate": 0.3875,
            "median_hours": None,
        },
    ],
}


class MeasuresReport(_Closed):
    """Every measure (or the ones asked for) over a period, with strata and the cascade."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "example": {
                "period": {"from": "2026-11-01", "to": "2026-11-30"},
                "scope": "organization",
                "organization": "Organization/jail-1",
                "suppression": {"applied": True, "min_cell": 11, "shown_as": "<11"},
                "filters": {"facility": None, "intercept": None},
                "measures": [_EXAMPLE_MEASURE],
                "cascade": [
                    {"step": "released-at-risk", "label": "Released at risk", "count": 120},
                    {"step": "screened", "label": "Screened", "count": 110},
                    {"step": "referred", "label": "Referred", "count": 90},
                    {
                        "step": "accepted-before-release",
                        "label": "Referral accepted before release",
                        "count": 70,
                    },
                    {"step": "contacted-72h", "label": "Contacted within 72 hours", "count": 50},
                    {"step": "treatment-14d", "label": "Treatment within 14 days", "count": "<11"},
                ],
            }
        },
    )
    period: Period
    scope: Literal["organization", "all"]
    organization: str | None
    suppression: Suppression
    filters: Filters
    measures: list[MeasureResult]
    cascade: list[CascadeStep]


def _split(values: list[str] | None) -> tuple[str, ...]:
    return tuple(v.strip() for value in values or [] for v in value.split(",") if v.strip())


MEASURES_DOC = (
    "The program measures (clinical-content §5) over a period of whole UTC days, inclusive "
    "(`from` to `to`; a release at 23:59:59 of `to` counts; at most 3 years), computed by the "
    "database from maintained facts. Proportions count releases; the default denominator is "
    "releases of people at risk. An organization's client counts the releases it is a party "
    "to (its own bookings, or referrals it requested or received) and, in referral numerators, "
    'only its own referrals; counts from 1 to 10 are shown as `"<11"` (the threshold is '
    "`HANDOFF_MEASURES_MIN_CELL`), with complementary suppression. An administrator's client "
    "(no organization, `handoff/admin`) sees all, unsuppressed unless `suppress=true`. "
    "`format=csv` (or `Accept: text/csv`): one row per measure, stratifier and value. Needs "
    "`system/MeasureReport.read`."
)


@router.get(
    "/measures",
    summary="Program measures: cascade, rates and strata (JSON or CSV)",
    description=MEASURES_DOC,
    responses={
        **V1_ERRORS,
        200: {
            "description": "The report",
            "model": MeasuresReport,
            "content": {
                "text/csv": {
                    "schema": {"type": "string"},
                    "example": ",".join(CSV_HEADER) + "\r\n",
                }
            },
        },
    },
)
async def measures(
    ctx: ContextDep,
    date_from: Annotated[Day, Query(alias="from", description="First day (YYYY-MM-DD, UTC)")],
    date_to: Annotated[Day, Query(alias="to", description="Last day (YYYY-MM-DD, UTC), inclusive")],
    facility: Annotated[
        str | None,
        Query(pattern=r"^Location/[A-Za-z0-9\-\.]{1,64}$", description="Location/<id>"),
    ] = None,
    intercept: Annotated[int | None, Query(ge=0, le=5, description="SIM intercept 0-5")] = None,
    stratify: Annotated[
        list[str] | None,
        Query(description=f"Comma-separated, any of: {', '.join(STRATIFIERS)}"),
    ] = None,
    measure: Annotated[
        list[str] | None, Query(description="Comma-separated measure ids (default: all)")
    ] = None,
    suppress: Annotated[
        bool | None, Query(description="Administrator: apply small-cell suppression too")
    ] = None,
    format: Literal["json", "csv"] | None = None,
    accept: Annotated[str | None, Header()] = None,
) -> Response:
    report: dict[str, Any] = await evaluate(
        ctx,
        MeasureQuery(
            date_from=date_from,
            date_to=date_to,
            measures=_split(measure),
            stratify=_split(stratify),
            facility=facility,
            intercept=intercept,
            suppress=suppress,
        ),
    )
    wants_csv = format == "csv" or (format is None and "text/csv" in (accept or "").lower())
    if wants_csv:
        return Response(
            report_csv(report),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": 'attachment; filename="measures.csv"'},
        )
    return JSONResponse(report)
