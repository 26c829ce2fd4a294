"""The program measures (clinical-content §5): what each counts, in words and as the columns of
the maintained facts (``facts``) the SQL evaluation adds up.

Proportion measures count **releases** (release events, not people) whose ``released_at`` falls
in the period; the default denominator is the releases of people at risk (``at_risk``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from service.fhir.codes import HANDOFF

MEASURE_VERSION = "1.0.0"
CANONICAL_BASE = f"{HANDOFF}/Measure"

Group = Literal["screening", "education", "naloxone", "referral", "contact", "treatment", "outcome"]
Scoring = Literal["proportion", "count", "median"]

STRATIFIERS = ("month", "facility", "intercept", "sex", "age_band", "stay_length", "release_type")
# Stratifiers of count measures over events (kits, reversals): the event's own.
EVENT_STRATIFIERS = ("month", "facility", "intercept")


@dataclass(frozen=True)
class MeasureDef:
    id: str
    title: str
    group: Group
    scoring: Scoring
    unit: str
    description: str
    denominator_text: str | None
    numerator_text: str
    # Proportion/median: SQL over measure_release (alias ``r``), 0/1 integer expressions.
    denominator: str | None = None
    numerator: str | None = None
    # Referral measures: the category whose accepted-before-release referrals count.
    referral_category: str | None = None
    # Count measures: the measure_event kind.
    event_kind: str | None = None

    @property
    def url(self) -> str:
        return f"{CANONICAL_BASE}/{self.id}"


AT_RISK = (
    "Releases in the period of people at risk (a positive screen or flagged high priority "
    "during the stay)"
)

MEASURES: tuple[MeasureDef, ...] = (
    MeasureDef(
        "screening-24h",
        "Screened within 24 hours of booking",
        "screening",
        "proportion",
        "releases",
        "Screening coverage at booking (NCCHC receiving screening; SIM intercept 2).",
        "Releases in the period whose custody stay lasted at least 24 hours",
        "Of those, stays with a completed screening authored within 24 hours of booking",
        denominator="r.stay_hours >= 24",
        numerator="r.stay_hours >= 24 AND r.screened_24h = 1",
    ),
    MeasureDef(
        "screening-72h",
        "Screened within 72 hours of booking",
        "screening",
        "proportion",
        "releases",
        "Screening coverage at booking (NCCHC receiving screening; SIM intercept 2).",
        "Releases in the period whose custody stay lasted at least 72 hours",
        "Of those, stays with a completed screening authored within 72 hours of booking",
        denominator="r.stay_hours >= 72",
        numerator="r.stay_hours >= 72 AND r.screened_72h = 1",
    ),
    MeasureDef(
        "education-before-release",
        "Overdose education before release",
        "education",
        "proportion",
        "releases",
        "Overdose education (OEND) documented during the stay, before release.",
        AT_RISK,
        "Of those, releases with a completed overdose-education Procedure between booking and "
        "release",
        denominator="r.at_risk = 1",
        numerator="r.at_risk = 1 AND r.educated = 1",
    ),
    MeasureDef(
        "naloxone-in-hand-at-release",
        "Naloxone in hand at release",
        "naloxone",
        "proportion",
        "releases",
        "Take-home naloxone handed to the person themself (Bird, Parmar & Strang 2015).",
        AT_RISK,
        "Of those, releases with a naloxone kit dispensed to the person between booking and "
        "release",
        denominator="r.at_risk = 1",
        numerator="r.at_risk = 1 AND r.naloxone_in_hand = 1",
    ),
    MeasureDef(
        "naloxone-kits-distributed",
        "Naloxone kits distributed",
        "naloxone",
        "count",
        "kits",
        "Kits handed out (completed MedicationDispense or SupplyDelivery of rescue naloxone).",
        None,
        "Kits (record quantity) handed over in the period",
        event_kind="kit",
    ),
    MeasureDef(
        "overdose-reversals-reported",
        "Overdose reversals reported",
        "naloxone",
        "count",
        "reports",
        "Overdose responses reported with the person surviving (survived or transported).",
        None,
        "Overdose-response reports in the period with outcome survived or transported",
        event_kind="reversal",
    ),
    *(
        MeasureDef(
            f"referral-accepted-before-release-{category}",
            f"{label} referral accepted before release",
            "referral",
            "proportion",
            "releases",
            "Warm hand-off: a referral accepted by the receiving organization before the "
            "person left custody (SIM intercept 4).",
            AT_RISK,
            f"Of those, releases with a {label.lower()} referral whose Task was accepted "
            "strictly before the release time",
            denominator="r.at_risk = 1",
            numerator="r.at_risk = 1",
            referral_category=category,
        )
        for category, label in (
            ("treatment", "Treatment"),
            ("harm-reduction", "Harm reduction"),
            ("peer-support", "Peer support"),
        )
    ),
    MeasureDef(
        "first-contact-median-hours",
        "Time to first contact after release (median hours)",
        "contact",
        "median",
        "hours",
        "Hours from release to the first Communication that reached the person.",
        None,
        "Releases at risk in the period with a first contact after release; the median of its "
        "hours after release",
        numerator="r.at_risk = 1 AND r.contact_hours IS NOT NULL",
    ),
    MeasureDef(
        "contact-within-24h",
        "Contacted within 24 hours of release",
        "contact",
        "proportion",
        "releases",
        "First documented contact that reached the person at most 24 hours after release.",
        AT_RISK,
        "Of those, releases with a first contact at most 24 hours after release",
        denominator="r.at_risk = 1",
        numerator="r.at_risk = 1 AND r.contacted_24h = 1",
    ),
    MeasureDef(
        "contact-within-72h",
        "Contacted within 72 hours of release",
        "contact",
        "proportion",
        "releases",
        "First documented contact that reached the person at most 72 hours after release.",
        AT_RISK,
        "Of those, releases with a first contact at most 72 hours after release",
        denominator="r.at_risk = 1",
        numerator="r.at_risk = 1 AND r.contacted_72h = 1",
    ),
    MeasureDef(
        "treatment-initiation-14d",
        "Treatment started within 14 days of release",
        "treatment",
        "proportion",
        "releases",
        "HEDIS IET initiation analogue, from attended appointments' clinical dates.",
        AT_RISK,
        "Of those, releases with an attended appointment of a treatment/MOUD referral on or "
        "before the 14th day after the release day",
        denominator="r.at_risk = 1",
        numerator="r.at_risk = 1 AND r.treatment_14d = 1",
    ),
    MeasureDef(
        "treatment-engagement-34d",
        "Treatment engagement within 34 days",
        "treatment",
        "proportion",
        "releases",
        "HEDIS IET engagement analogue.",
        AT_RISK,
        "Of those, releases initiated within 14 days with two further attended appointments "
        "(or a referral closed as engaged) within 34 days of initiation",
        denominator="r.at_risk = 1",
        numerator="r.at_risk = 1 AND r.engaged_34d = 1",
    ),
    MeasureDef(
        "deceased-after-release",
        "Died after release",
        "outcome",
        "proportion",
        "releases",
        "Deaths recorded after release (Patient.deceased, a closed-deceased referral, or a "
        "release of type deceased): a partial view without medical-examiner linkage.",
        AT_RISK,
        "Of those, releases of people with a recorded death at or after the release",
        denominator="r.at_risk = 1",
        numerator="r.at_risk = 1 AND r.deceased_at IS NOT NULL",
    ),
    MeasureDef(
        "rebooked-within-12-months",
        "Re-booked within 12 months",
        "outcome",
        "proportion",
        "releases",
        "Re-incarceration: a next booking of the person within 365 days of the release.",
        AT_RISK,
        "Of those, releases followed by a booking of the person within 365 days",
        denominator="r.at_risk = 1",
        numerator="r.at_risk = 1 AND r.rebooked_12m = 1",
    ),
)

BY_ID = {m.id: m for m in MEASURES}

CASCADE = (
    ("released-at-risk", "Released at risk", "r.at_risk = 1"),
    ("screened", "Screened", "r.at_risk = 1 AND r.screened_at IS NOT NULL"),
    ("referred", "Referred", "r.at_risk = 1 AND r.referred = 1"),
    (
        "accepted-before-release",
        "Referral accepted before release",
        "r.at_risk = 1 AND r.a_any = 1",
    ),
    ("contacted-72h", "Contacted within 72 hours", "r.at_risk = 1 AND r.contacted_72h = 1"),
    ("treatment-14d", "Treatment within 14 days", "r.at_risk = 1 AND r.treatment_14d = 1"),
)
