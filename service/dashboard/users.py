"""Who is signed in to the dashboard, and how an OpenID Connect identity maps to that.

A dashboard user has a role: ``program-manager`` (sees the measures of one Organization, small
cells suppressed) or ``admin`` (sees all organizations). The user is kept in the signed session
cookie as a small dict; nothing else about the person is stored.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping, MutableMapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

Role = Literal["program-manager", "admin"]
ROLES: tuple[Role, ...] = ("program-manager", "admin")
ROLE_LABELS: dict[str, str] = {"program-manager": "Program manager", "admin": "Administrator"}
_ORGANIZATION = re.compile(r"^(?:Organization/)?([A-Za-z0-9\-.]{1,64})$")
SESSION_USER = "user"
SESSION_CSRF = "csrf"


class SignInRefused(Exception):
    """The identity cannot use the dashboard; the message says what to change."""


@dataclass(frozen=True)
class DashboardUser:
    subject: str  # the provider's ``sub`` (or ``demo:...``)
    name: str
    role: Role
    organization: str | None  # Organization/<id>; None for an administrator
    organization_name: str | None
    via: Literal["oidc", "demo"]
    expires: int  # epoch seconds

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    @property
    def role_label(self) -> str:
        return ROLE_LABELS[self.role]

    def to_session(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_session(cls, data: object, *, now: datetime) -> DashboardUser | None:
        """The signed-in user, or None when there is none or the sign-in has expired."""
        if not isinstance(data, dict):
            return None
        try:
            user = cls(**data)
        except TypeError:
            return None
        if user.role not in ROLES or user.expires <= int(now.timestamp()):
            return None
        return user


def expiry(now: datetime, hours: int) -> int:
    return int((now + timedelta(hours=hours)).timestamp())


def organization_reference(value: object) -> str | None:
    """``Organization/<id>`` from an id or a reference; None if it is not one."""
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if not isinstance(value, str):
        return None
    match = _ORGANIZATION.match(value.strip())
    return f"Organization/{match.group(1)}" if match else None


def user_from_claims(
    claims: Mapping[str, Any],
    *,
    organization_claim: str,
    role_claim: str,
    hours: int,
    now: datetime | None = None,
) -> DashboardUser:
    """Map validated ID-token claims to a dashboard user, or refuse saying which claim to fix."""
    now = now or datetime.now(UTC)
    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject:
        raise SignInRefused("The identity provider sent no subject ('sub') for this person.")
    role = claims.get(role_claim)
    if isinstance(role, list):
        role = "admin" if "admin" in role else next((r for r in role if r in ROLES), None)
    if role not in ROLES:
        raise SignInRefused(
            f"This account has no dashboard role: the identity provider must send the claim "
            f"'{role_claim}' with the value 'program-manager' or 'admin'."
        )
    organization = None
    if role == "program-manager":
        organization = organization_reference(claims.get(organization_claim))
        if organization is None:
            raise SignInRefused(
                f"A program manager's account must name its organization: the identity "
                f"provider must send the claim '{organization_claim}' with the Handoff "
                "Organization id (e.g. 'Organization/123' or '123')."
            )
    name = next(
        (v for k in ("name", "preferred_username", "email") if isinstance(v := claims.get(k), str)),
        subject,
    )
    return DashboardUser(
        subject=subject,
        name=name[:200],
        role=role,
        organization=organization,
        organization_name=None,
        via="oidc",
        expires=expiry(now, hours),
    )


def csrf_token(session: MutableMapping[str, Any]) -> str:
    """The session's form token (made on first use)."""
    token = session.get(SESSION_CSRF)
    if not isinstance(token, str):
        token = session[SESSION_CSRF] = secrets.token_urlsafe(24)
    return token


def csrf_ok(session: Mapping[str, Any], sent: object) -> bool:
    token = session.get(SESSION_CSRF)
    return (
        isinstance(token, str)
        and isinstance(sent, str)
        and secrets.compare_digest(token.encode(), sent.encode())
    )
