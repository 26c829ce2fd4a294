"""Narrative.div: the XHTML a receiving system will display, checked as R4 requires.

R4 (narrative.html, invariant txt-1): the div is well-formed XHTML, a ``div`` in the XHTML
namespace; it holds no head or body, scripts, forms, base/link, frames, iframes, objects or
event attributes (``onclick``), nor xlink attributes. fhir.resources checks none of this, and a
narrative is what a provider's EHR renders: a script in it is stored XSS. A ``javascript:``
link is a script too. An empty div (against txt-2) is let through: harmless, and an official
R4 example (``Questionnaire-zika-virus-exposure-assessment``) has one.

Parsed with the standard library's expat, whose entity-expansion limits hold against "billion
laughs"; the fragment must start with ``<div``, so it cannot carry a DOCTYPE of its own.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

XHTML = "http://www.w3.org/1999/xhtml"
# URL schemes that run what follows when a receiving system follows the link.
_SCRIPT_SCHEMES = ("javascript:", "vbscript:", "data:text/html")


def is_script_url(value: str) -> bool:
    """A URL that runs a script when followed (browsers ignore case and leading blanks)."""
    return value.strip().lower().startswith(_SCRIPT_SCHEMES)


_FORBIDDEN_ELEMENTS = frozenset(
    {
        "head",
        "body",
        "script",
        "noscript",
        "form",
        "input",
        "button",
        "select",
        "textarea",
        "base",
        "link",
        "meta",
        "frame",
        "frameset",
        "iframe",
        "object",
        "embed",
        "applet",
    }
)
_URL_ATTRIBUTES = frozenset({"href", "src", "cite", "longdesc", "usemap", "background"})


def narrative_problem(div: str) -> str | None:
    """Why ``div`` is not an acceptable R4 narrative, or None."""
    if not div.lstrip().startswith("<div"):
        return "must be an XHTML <div> element"
    try:
        root = ET.fromstring(div)
    except ET.ParseError as exc:
        return f"is not well-formed XHTML ({exc})"
    if root.tag != f"{{{XHTML}}}div":
        return f'must be a <div xmlns="{XHTML}">'
    for element in root.iter():
        namespace, _, name = element.tag.rpartition("}")
        if namespace.lstrip("{") != XHTML:
            return f"holds <{name}> outside the XHTML namespace"
        if name in _FORBIDDEN_ELEMENTS:
            return f"holds a <{name}> element, which a narrative may not (txt-1)"
        for attribute, value in element.attrib.items():
            attr_ns, _, attr = attribute.rpartition("}")
            if attr.lower().startswith("on"):
                return f"holds an event attribute ({attr} on <{name}>), which a narrative may not"
            if attr_ns:
                return (
                    f"holds a namespaced attribute ({attr} on <{name}>), which a narrative may not"
                )
            if attr in _URL_ATTRIBUTES and is_script_url(value):
                return f"holds a script URL ({attr} on <{name}>), which a narrative may not"
    return None
