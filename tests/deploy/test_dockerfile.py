"""Structure of the Dockerfile and .dockerignore (no Docker engine is needed to run these)."""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DEV_TOOLS = ("pytest", "mypy", "ruff", "playwright", "fhirpy", "kubernetes-validate", "[test]")


@dataclass
class Instruction:
    keyword: str
    args: str


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [i.args for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> str:
        found = self.all(keyword)
        assert found, f"stage {self.name or self.base} has no {keyword}"
        return found[-1]


def parse_dockerfile(text: str) -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults and the stages, with line continuations joined."""
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):  # comment inside a continued instruction
            continue
        if line.endswith("\\"):
            pending += line[:-1].rstrip() + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, "dangling line continuation"

    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        keyword, _, args = line.partition(" ")
        keyword, args = keyword.upper(), args.strip()
        if keyword == "FROM":
            match = re.fullmatch(r"(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?", args, re.I)
            assert match, f"cannot parse FROM {args}"
            base = re.sub(r"\$\{(\w+)\}", lambda m: global_args[m.group(1)], match.group(1))
            stages.append(Stage(base=base, name=match.group(2)))
        elif not stages:
            assert keyword == "ARG", f"{keyword} before the first FROM"
            name, _, default = args.partition("=")
            global_args[name] = default
        else:
            stages[-1].instructions.append(Instruction(keyword, args))
    return global_args, stages


def env_of(stage: Stage) -> dict[str, str]:
    env: dict[str, str] = {}
    for args in stage.all("ENV"):
        for token in shlex.split(args):
            key, _, value = token.partition("=")
            env[key] = value
    return env


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list)
    assert all(isinstance(item, str) for item in value)
    return value


def dockerignore_excludes(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""

    def regex(pattern: str) -> re.Pattern[str]:
        out = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                out, i = out + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                out, i = out + ".*", i + 2
            elif pattern[i] == "*":
                out, i = out + "[^/]*", i + 1
            elif pattern[i] == "?":
                out, i = out + "[^/]", i + 1
            elif pattern[i] == "[":
                end = pattern.index("]", i)
                out, i = out + pattern[i : end + 1], end + 1
            else:
                out, i = out + re.escape(pattern[i]), i + 1
        return re.compile(out)

    parts = path.strip("/").split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        cleaned = os.path.normpath(pattern.lstrip("!").strip("/"))
        if any(regex(cleaned).fullmatch(candidate) for candidate in candidates):
            excluded = not negated
    return excluded


@pytest.fixture(scope="module")
def dockerfile() -> tuple[dict[str, str], list[Stage]]:
    return parse_dockerfile((REPO / "Dockerfile").read_text())


@pytest.fixture(scope="module")
def stages(dockerfile: tuple[dict[str, str], list[Stage]]) -> list[Stage]:
    return dockerfile[1]


@pytest.fixture(scope="module")
def runtime(stages: list[Stage]) -> Stage:
    return stages[-1]


@pytest.fixture(scope="module")
def builder(stages: list[Stage]) -> Stage:
    return stages[0]


@pytest.fixture(scope="module")
def ignore_patterns() -> list[str]:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def test_parser_handles_continuations_and_stages() -> None:
    text = "ARG IMG=python:3.11-slim\nFROM ${IMG} AS a\nRUN one \\\n    # note\n    two\nFROM a\n"
    args, stages = parse_dockerfile(text)
    assert args == {"IMG": "python:3.11-slim"}
    assert [(s.base, s.name) for s in stages] == [("python:3.11-slim", "a"), ("a", None)]
    assert stages[0].all("RUN") == ["one two"]
    with pytest.raises(AssertionError):
        parse_dockerfile("RUN before-from\n")


def test_multi_stage_on_python_311_slim(stages: list[Stage]) -> None:
    assert len(stages) >= 2
    assert stages[0].name == "builder"
    assert stages[-1].base == "python:3.11-slim"
    assert all(stage.base.startswith("python:3.11") for stage in stages)


def test_builder_installs_the_project_without_dev_extras(builder: Stage) -> None:
    copied = " ".join(builder.all("COPY"))
    for needed in ("pyproject.toml", "service/", "migrations/"):
        assert needed in copied
    installs = [cmd for cmd in builder.all("RUN") if "pip" in cmd and "install" in cmd]
    assert installs, "the builder never installs the project"
    for command in installs:
        assert re.search(r"install\b.*\s\.(\s|$)", command), command
        for tool in DEV_TOOLS:
            assert tool not in command


def test_runtime_stage_installs_nothing_and_carries_no_dev_tools(runtime: Stage) -> None:
    for command in runtime.all("RUN"):
        assert "pip" not in command
        assert "apt-get" not in command
    text = " ".join(i.args for i in runtime.instructions)
    for tool in DEV_TOOLS:
        assert tool not in text
    sources = runtime.all("COPY")
    assert sources and all(args.startswith("--from=builder") for args in sources)


def test_runtime_copies_the_venv_and_the_migrations(builder: Stage, runtime: Stage) -> None:
    copies = [shlex.split(args) for args in runtime.all("COPY")]
    targets = {parts[-1]: parts[-2] for parts in copies}
    assert targets == {"/opt/venv": "/opt/venv"}  # the venv holds service/ and migrations/
    builder_targets = [shlex.split(args)[-1] for args in builder.all("COPY")]
    assert any(t.rstrip("/").endswith("migrations") for t in builder_targets)
    # migrations/ must be copied before the project is installed (it is a package of it)
    order = [i.args for i in builder.instructions if i.keyword in ("COPY", "RUN")]
    copy_at = next(n for n, a in enumerate(order) if "migrations/" in a)
    install_at = next(n for n, a in enumerate(order) if "pip" in a and "install" in a)
    assert copy_at < install_at
    assert runtime.last("WORKDIR") == "/tmp"  # the only writable place
    assert env_of(runtime)["PATH"].startswith("/opt/venv/bin:")


def test_runs_as_fixed_non_root_user(runtime: Stage) -> None:
    user = runtime.last("USER")
    uid, _, gid = user.partition(":")
    assert uid == "10001"
    assert gid in ("", "10001")
    created = " ".join(runtime.all("RUN"))
    assert "--uid 10001" in created
    assert "--gid 10001" in created
    # USER comes after every COPY/RUN, so nothing later runs as root.
    keywords = [i.keyword for i in runtime.instructions]
    last_user = max(n for n, k in enumerate(keywords) if k == "USER")
    assert not {"RUN", "COPY", "ADD"} & set(keywords[last_user:])


def test_entrypoint_command_and_port(runtime: Stage) -> None:
    assert exec_form(runtime.last("ENTRYPOINT")) == ["handoff"]
    assert exec_form(runtime.last("CMD")) == ["serve", "--host", "0.0.0.0", "--port", "8000"]
    assert runtime.last("EXPOSE") == "8000"


def test_environment_suits_a_read_only_root(runtime: Stage) -> None:
    env = env_of(runtime)
    assert env["PYTHONUNBUFFERED"] == "1"
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["HOME"] == "/tmp"
    assert env["TMPDIR"] == "/tmp"
    # The default SQLite file must live in the only writable place.
    assert env["HANDOFF_DATABASE_URL"].startswith("sqlite+aiosqlite:////tmp/")


def test_bytecode_is_compiled_at_build_time(builder: Stage) -> None:
    compiled = [cmd for cmd in builder.all("RUN") if "compileall" in cmd]
    assert any("/opt/venv" in cmd for cmd in compiled)


def _healthcheck_command(runtime: Stage) -> list[str]:
    args = runtime.last("HEALTHCHECK")
    options, _, command = args.partition("CMD ")
    assert "--interval=" in options and "--timeout=" in options
    return exec_form(command)


class _Health(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/healthz" else 503)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def health_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _run_healthcheck(command: list[str], url: str | None) -> int:
    env = {"PATH": os.environ.get("PATH", "")}
    if url is not None:
        env["HANDOFF_HEALTHCHECK_URL"] = url
    argv = [sys.executable, *command[1:]]
    return subprocess.run(argv, env=env, capture_output=True, timeout=30, check=False).returncode


def test_healthcheck_probes_healthz_with_python(runtime: Stage, health_server: str) -> None:
    command = _healthcheck_command(runtime)
    assert command[:2] == ["python", "-c"]
    assert "http://127.0.0.1:8000/healthz" in command[2]
    assert "curl" not in command and "wget" not in command
    assert _run_healthcheck(command, f"{health_server}/healthz") == 0
    assert _run_healthcheck(command, f"{health_server}/unhealthy") != 0


def test_healthcheck_fails_when_nothing_listens(runtime: Stage, health_server: str) -> None:
    command = _healthcheck_command(runtime)
    port = int(health_server.rsplit(":", 1)[1])
    # Bind-and-release gives a port with no listener.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free = probe.getsockname()[1]
    assert free != port
    assert _run_healthcheck(command, f"http://127.0.0.1:{free}/healthz") != 0


def test_dockerignore_matcher_follows_docker_rules() -> None:
    patterns = ["*", "!service/", "**/__pycache__", "**/.env"]
    assert dockerignore_excludes("tests/test_x.py", patterns)
    assert not dockerignore_excludes("service/app.py", patterns)
    assert dockerignore_excludes("service/__pycache__/app.cpython-311.pyc", patterns)
    assert dockerignore_excludes(".env", patterns)
    assert dockerignore_excludes("service/.env", patterns)


def test_dockerignore_keeps_sources_and_drops_secrets(
    ignore_patterns: list[str], builder: Stage
) -> None:
    for args in builder.all("COPY"):
        for source in shlex.split(args)[:-1]:
            if not source.startswith("--"):
                assert not dockerignore_excludes(source, ignore_patterns), source
    for kept in ("service/app.py", "service/cli.py", "migrations/env.py", "migrations/alembic.ini"):
        assert not dockerignore_excludes(kept, ignore_patterns), kept
    for dropped in (
        ".git/config",
        ".env",
        "service/.env",
        "handoff.db",
        "tests/test_api.py",
        "deploy/helm/handoff/values.yaml",
        ".venv/bin/python",
        "service/__pycache__/app.cpython-311.pyc",
        "signing-key.pem",
    ):
        assert dockerignore_excludes(dropped, ignore_patterns), dropped
