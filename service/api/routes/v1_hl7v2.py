"""JMS API: HL7 v2 ADT messages over HTTP (/v1/hl7v2/adt), for a jail whose JMS already sends
ADT to its health vendor: the same custody stays as /v1/bookings, answered with an ACK."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from service.api.deps import AuditedRoute, ContextDep
from service.api.routes.v1_assessments import V1_ERRORS
from service.errors import InvalidRequestError, UnsupportedMediaTypeError
from service.features.custody import adt

router = APIRouter(prefix="/v1/hl7v2", tags=["JMS: custody"], route_class=AuditedRoute)

HL7_V2 = "application/hl7-v2"
# HL7 over HTTP (HAPI's specification): AA -> 200, AR -> 400. AE (understood, not applied)
# answers 422 here rather than the specification's 500: nothing failed on the server's side.
_STATUS = {"AA": 200, "AR": 400, "AE": 422}
_EXAMPLE = (
    "MSH|^~\\&|JMS|COUNTYJAIL|HANDOFF|HANDOFF|20261127164000||ADT^A03^ADT_A03|MSG0002|P|2.5.1\r"
    "EVN|A03|20261127164000\r"
    "PID|1||P-100234^^^COUNTYJAIL^PI||Rivera^Dana||19880314|F\r"
    "PV1|1|I|MAIN^^^County Jail||||||||||||||||2026-11-0457|||||||||||||||||court-order"
    "|||||||20261127164000\r"
)


def _charset(content_type: str) -> str:
    for part in content_type.split(";")[1:]:
        key, _, value = part.strip().partition("=")
        if key.lower() == "charset" and value:
            return value.strip('"')
    return "utf-8"


# An ACK: MSH and MSA segments (ERR when not applied), separated by CR.
_ACK = {"type": "string", "pattern": "^MSH\\|"}


@router.post(
    "/adt",
    summary="Send an HL7 v2 ADT message (A01, A02, A03, A08, A11, A13)",
    response_class=Response,
    responses={
        **{k: v for k, v in V1_ERRORS.items() if k in (401, 403, 415, 429)},
        200: {
            "description": "AA: applied",
            "content": {HL7_V2: {"schema": _ACK, "example": "MSH|...\rMSA|AA|MSG0002\r"}},
        },
        400: {
            "description": "AR: not a message this endpoint takes",
            "content": {HL7_V2: {"schema": _ACK}},
        },
        422: {
            "description": "AE: understood, not applied (ERR says why)",
            "content": {HL7_V2: {"schema": _ACK}},
        },
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {HL7_V2: {"schema": {"type": "string"}, "example": _EXAMPLE}},
        }
    },
)
async def receive_adt(request: Request, ctx: ContextDep) -> Response:
    """One ER7 message per request (`Content-Type: application/hl7-v2; charset=utf-8`),
    segments separated by CR (LF and CRLF are taken too). Booking number: PV1-19; person:
    PID-3.1 (person id), PID-5, PID-7, PID-8; facility: PV1-3.4 (else PV1-3.1); booked at:
    PV1-44; expected release: PV2-9; released at: PV1-45; release type: PV1-36 (a Handoff
    release-type code, else `other`); destination: PV1-37. A release is unplanned when no
    expected release was known or it came more than an hour early. The same MSH-10 again is
    answered with the same ACK and writes nothing."""
    content_type = request.headers.get("content-type", "")
    ctype = content_type.split(";")[0].strip().lower()
    if ctype not in (HL7_V2, "x-application/hl7-v2+er7"):
        raise UnsupportedMediaTypeError(
            f"Content-Type {ctype or '(none)'} is not supported here: send one HL7 v2 message "
            "(ER7) with Content-Type: application/hl7-v2; charset=utf-8"
        )
    raw = await request.body()
    try:
        text = raw.decode(_charset(content_type))
    except (LookupError, UnicodeDecodeError) as exc:
        raise InvalidRequestError(f"The message cannot be decoded: {exc}") from None
    answer = await adt.receive(ctx, text)
    return Response(
        content=answer.text, status_code=_STATUS[answer.ack_code], media_type=f"{HL7_V2}"
    )
