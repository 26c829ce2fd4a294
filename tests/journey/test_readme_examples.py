"""The README's example sections, run as written (bash and curl) against `handoff serve --demo`
on a port other than the default: each section on its own, in a fresh shell (no variable
carried from another), the jail's before the provider's, as a newcomer would."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cli.test_serve import free_port, start, wait_ready

README = Path(__file__).resolve().parents[2] / "README.md"
SECTIONS = (
    "Getting a token",
    "Example: a jail refers a person before release",
    "Example: a provider polls — with the cursor, not with a clock",
)


def section_scripts(title: str) -> list[str]:
    """The ```sh blocks of one README section."""
    text = README.read_text(encoding="utf-8")
    body = text.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.*?)```", body, flags=re.DOTALL)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    tmp = tmp_path_factory.mktemp("readme")
    env = {
        "HANDOFF_LOG_LEVEL": "WARNING",
        "HANDOFF_DATABASE_URL": f"sqlite+aiosqlite:///{tmp / 'readme.db'}",
    }
    port = free_port()
    assert port != 8000
    proc = start(["serve", "--demo", "--port", str(port)], env, tmp, log=tmp / "server.log")
    try:
        wait_ready(f"http://127.0.0.1:{port}", proc)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def run_section(title: str, port: int) -> str:
    scripts = section_scripts(title)
    assert scripts, f"README section {title!r} has no sh block"
    first = scripts[0]
    assert first.startswith("PORT=8000; BASE=http://127.0.0.1:$PORT\n"), title
    script = "set -euo pipefail\n" + first.replace("PORT=8000", f"PORT={port}", 1)
    done = subprocess.run(
        ["bash", "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, f"{title}: {done.stderr}\n{done.stdout}"
    return done.stdout


def json_documents(output: str) -> list[dict[str, object]]:
    """The JSON documents curl printed one after another."""
    decoder = json.JSONDecoder()
    found, at = [], 0
    while at < len(output):
        if output[at].isspace():
            at += 1
            continue
        value, at = decoder.raw_decode(output, at)
        found.append(value)
    return found


def test_each_readme_section_runs_on_its_own_on_another_port(server: int) -> None:
    assert run_section(SECTIONS[0], server) == ""  # sets TOKEN, prints nothing

    referral, worklist = json_documents(run_section(SECTIONS[1], server))
    assert referral["jms_referral_id"] == "JMS-README-0001"
    assert referral["status"] == "requested"
    assert str(referral["links"]["self"]).startswith(f"http://127.0.0.1:{server}/v1/")  # type: ignore[index]
    assert isinstance(worklist, list)
    assert [r["jms_referral_id"] for r in worklist] == ["JMS-README-0001"]

    [page] = json_documents(run_section(SECTIONS[2], server))
    assert page["resourceType"] == "Bundle"
    entries = page.get("entry", [])
    tasks = [e["resource"] for e in entries if e["resource"]["resourceType"] == "Task"]  # type: ignore[index]
    assert [t["id"] for t in tasks] == [referral["task_id"]]
    assert any(link["relation"] == "cursor" for link in page["link"])  # type: ignore[union-attr]
