"""The Helm chart: lint, render, validate against the Kubernetes schemas, and check behaviour.

Needs a `helm` binary: `dir=$(tools/install-helm) && export PATH="$dir:$PATH"`.
Without one the tests skip locally and fail when CI is set.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "deploy" / "helm" / "handoff"
PRODUCTION_VALUES = CHART / "ci" / "production-values.yaml"
RELEASE = "rel"
NAMESPACE = "clinic"
FULLNAME = "rel-handoff"
# Rendered and validated for one Kubernetes version that kubernetes-validate ships.
KUBE_VERSION = "1.35.0"

Manifest = dict[str, Any]
Render = Callable[..., list[Manifest]]


def _find_helm() -> str | None:
    found = shutil.which("helm")
    if found:
        return found
    # Where tools/install-helm puts it by default.
    cached = Path.home() / ".cache" / "handoff-tools" / "bin" / "helm"
    return str(cached) if os.access(cached, os.X_OK) else None


@pytest.fixture(scope="session")
def helm() -> str:
    found = _find_helm()
    if found is None:
        message = (
            'helm is not installed: run `dir=$(tools/install-helm) && export PATH="$dir:$PATH"`'
        )
        if os.environ.get("CI"):
            pytest.fail(message + " (CI is set, so a missing helm is an error)", pytrace=False)
        pytest.skip(message)
    return found


def _run(helm: str, args: Sequence[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [helm, *args], capture_output=True, text=True, timeout=60, check=False, cwd=REPO
    )


def _value_args(
    tmp_path: Path | None, values: dict[str, Any] | None, files: Sequence[Path]
) -> list[str]:
    args: list[str] = []
    for path in files:
        args += ["-f", str(path)]
    if values is not None:
        assert tmp_path is not None
        extra = tmp_path / f"values-{len(list(tmp_path.iterdir()))}.yaml"
        extra.write_text(yaml.safe_dump(values))
        args += ["-f", str(extra)]
    return args


def _template(
    helm: str,
    *,
    tmp_path: Path | None = None,
    values: dict[str, Any] | None = None,
    files: Sequence[Path] = (),
) -> subprocess.CompletedProcess[str]:
    return _run(
        helm,
        [
            "template",
            RELEASE,
            str(CHART),
            "--namespace",
            NAMESPACE,
            "--kube-version",
            KUBE_VERSION,
            *_value_args(tmp_path, values, files),
        ],
    )


def _render(
    helm: str,
    *,
    tmp_path: Path | None = None,
    values: dict[str, Any] | None = None,
    files: Sequence[Path] = (),
) -> list[Manifest]:
    result = _template(helm, tmp_path=tmp_path, values=values, files=files)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module")
def default_manifests(helm: str) -> list[Manifest]:
    return _render(helm)


@pytest.fixture(scope="module")
def production_manifests(helm: str) -> list[Manifest]:
    return _render(helm, files=[PRODUCTION_VALUES])


@pytest.fixture
def render(helm: str, tmp_path: Path) -> Render:
    def _do(values: dict[str, Any] | None = None, **kwargs: Any) -> list[Manifest]:
        return _render(helm, tmp_path=tmp_path, values=values, **kwargs)

    return _do


def _kinds(manifests: list[Manifest]) -> list[str]:
    return sorted(m["kind"] for m in manifests)


def _component(manifest: Manifest) -> str | None:
    labels: dict[str, str] = manifest["metadata"].get("labels", {})
    return labels.get("app.kubernetes.io/component")


def _one(manifests: list[Manifest], kind: str, component: str | None = None) -> Manifest:
    """The one object of ``kind``; Deployments: the API server's unless ``component`` says."""
    if kind == "Deployment" and component is None:
        component = "server"
    found = [
        m
        for m in manifests
        if m["kind"] == kind and (component is None or _component(m) == component)
    ]
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def _container(workload: Manifest) -> dict[str, Any]:
    containers = workload["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    result: dict[str, Any] = containers[0]
    return result


def _env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {item["name"]: item for item in container.get("env", [])}


def _config(manifests: list[Manifest]) -> dict[str, str]:
    data: dict[str, str] = _one(manifests, "ConfigMap")["data"]
    return data


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


# --- lint and schema validation of every manifest ---------------------------------------------


@pytest.mark.parametrize("files", [(), (PRODUCTION_VALUES,)], ids=["default", "production"])
def test_helm_lint_strict_passes(helm: str, files: tuple[Path, ...]) -> None:
    result = _run(helm, ["lint", "--strict", str(CHART), *_value_args(None, None, files)])
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("scenario", ["default", "production"])
def test_every_manifest_is_valid_kubernetes(
    scenario: str, default_manifests: list[Manifest], production_manifests: list[Manifest]
) -> None:
    manifests = default_manifests if scenario == "default" else production_manifests
    assert manifests
    for manifest in manifests:
        # strict: unknown fields (a misspelt key) are errors too.
        kubernetes_validate.validate(manifest, KUBE_VERSION, strict=True)


def test_validator_catches_a_broken_manifest(default_manifests: list[Manifest]) -> None:
    # Guards the test above: the validator must reject what the API server would.
    deployment = json.loads(json.dumps(_one(default_manifests, "Deployment")))
    deployment["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBE_VERSION, strict=True)


def test_default_release_objects(default_manifests: list[Manifest]) -> None:
    assert _kinds(default_manifests) == [
        "ConfigMap",
        "Deployment",
        "Deployment",
        "Job",
        "PodDisruptionBudget",
        "Service",
        "ServiceAccount",
    ]
    for manifest in default_manifests:
        assert manifest["metadata"]["name"].startswith(FULLNAME)


def test_production_release_adds_ingress_and_hpa(production_manifests: list[Manifest]) -> None:
    assert _kinds(production_manifests) == [
        "ConfigMap",
        "Deployment",
        "Deployment",
        "HorizontalPodAutoscaler",
        "Ingress",
        "Job",
        "PodDisruptionBudget",
        "Service",
        "ServiceAccount",
    ]


# --- Deployment ---------------------------------------------------------------------------------


def test_deployment_defaults_to_two_replicas(default_manifests: list[Manifest]) -> None:
    assert _one(default_manifests, "Deployment")["spec"]["replicas"] == 2


def test_replica_count_is_honoured(render: Render) -> None:
    assert _one(render({"replicaCount": 3}), "Deployment")["spec"]["replicas"] == 3


def test_probes_hit_health_endpoints_on_the_http_port(default_manifests: list[Manifest]) -> None:
    container = _container(_one(default_manifests, "Deployment"))
    assert container["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]
    assert container["args"] == ["serve", "--host", "0.0.0.0", "--port", "8000", "--no-worker"]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 30


def test_the_notification_worker_has_its_deployment_probes_and_replicas(
    default_manifests: list[Manifest], render: Render
) -> None:
    worker = _one(default_manifests, "Deployment", "worker")
    assert worker["spec"]["replicas"] == 2
    selector = worker["spec"]["selector"]["matchLabels"]
    assert _matches(selector, worker["spec"]["template"]["metadata"]["labels"])
    server = _one(default_manifests, "Deployment")
    assert not _matches(selector, server["spec"]["template"]["metadata"]["labels"])
    container = _container(worker)
    assert container["args"] == ["worker", "--health-port", "8081"]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert container["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert "HANDOFF_DATABASE_URL" in _env(container)
    three = render({"worker": {"enabled": True, "replicaCount": 3, "healthPort": 8081}})
    assert _one(three, "Deployment", "worker")["spec"]["replicas"] == 3
    # Without the worker Deployment, the API pods deliver notifications themselves.
    alone = render({"worker": {"enabled": False, "replicaCount": 1, "healthPort": 8081}})
    assert [m for m in alone if _component(m) == "worker"] == []
    assert "--no-worker" not in _container(_one(alone, "Deployment"))["args"]


def test_pod_and_container_are_locked_down(default_manifests: list[Manifest]) -> None:
    pod = _one(default_manifests, "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 10001,
        "runAsGroup": 10001,
        "fsGroup": 10001,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert pod["automountServiceAccountToken"] is False
    context = _container(_one(default_manifests, "Deployment"))["securityContext"]
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["privileged"] is False
    assert context["runAsNonRoot"] is True
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert context["seccompProfile"] == {"type": "RuntimeDefault"}


def test_only_tmp_is_writable(default_manifests: list[Manifest]) -> None:
    deployment = _one(default_manifests, "Deployment")
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    mounts = {m["mountPath"]: m for m in _container(deployment)["volumeMounts"]}
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]]
    writable = [path for path, mount in mounts.items() if not mount.get("readOnly")]
    assert writable == ["/tmp"]


def test_ids_can_be_left_to_the_platform(render: Render) -> None:
    ids = {"runAsUser": None, "runAsGroup": None, "fsGroup": None}
    pod = _one(render({"podSecurityContext": ids}), "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"] == {
        "runAsNonRoot": True,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def test_graceful_shutdown_drains_before_sigterm(default_manifests: list[Manifest]) -> None:
    deployment = _one(default_manifests, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    command = _container(deployment)["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    assert 0 < int(command[1]) < pod["terminationGracePeriodSeconds"]
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_pre_stop_longer_than_grace_period_is_refused(helm: str, tmp_path: Path) -> None:
    values = {"preStopSleepSeconds": 30, "terminationGracePeriodSeconds": 30}
    result = _template(helm, tmp_path=tmp_path, values=values)
    assert result.returncode != 0
    assert "preStopSleepSeconds must be shorter than terminationGracePeriodSeconds" in (
        result.stderr
    )


def test_database_url_comes_from_the_existing_secret(default_manifests: list[Manifest]) -> None:
    env = _env(_container(_one(default_manifests, "Deployment")))
    assert env["HANDOFF_DATABASE_URL"] == {
        "name": "HANDOFF_DATABASE_URL",
        "valueFrom": {"secretKeyRef": {"name": "handoff-database", "key": "url"}},
    }
    assert "HANDOFF_DATABASE_URL" not in _config(default_manifests)


def test_signing_keys_are_mounted_and_pointed_to(default_manifests: list[Manifest]) -> None:
    deployment = _one(default_manifests, "Deployment")
    container = _container(deployment)
    path = _env(container)["HANDOFF_AUTH_SIGNING_KEYS_FILE"]["value"]
    assert path == "/etc/handoff/signing-keys/jwks.json"
    mount = next(m for m in container["volumeMounts"] if m["name"] == "signing-keys")
    assert mount == {
        "name": "signing-keys",
        "mountPath": "/etc/handoff/signing-keys",
        "readOnly": True,
    }
    volume = next(
        v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == "signing-keys"
    )
    assert volume["secret"]["secretName"] == "handoff-signing-keys"
    assert volume["secret"]["items"] == [{"key": "jwks.json", "path": "jwks.json"}]
    # Readable by the fsGroup only (0440), never world-readable.
    assert volume["secret"]["defaultMode"] == 0o440


def test_custom_secret_names_and_keys_are_wired(production_manifests: list[Manifest]) -> None:
    deployment = _one(production_manifests, "Deployment")
    env = _env(_container(deployment))
    assert env["HANDOFF_DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {
        "name": "handoff-prod-database",
        "key": "DATABASE_URL",
    }
    assert env["HANDOFF_AUTH_SIGNING_KEYS_FILE"]["value"] == "/var/run/secrets/handoff/keys.jwks"
    volume = next(
        v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == "signing-keys"
    )
    assert volume["secret"]["secretName"] == "handoff-prod-signing-keys"


def test_signing_keys_can_be_turned_off_for_an_external_idp(render: Render) -> None:
    values = {"auth": {"signingKeys": {"existingSecret": ""}}}
    deployment = _one(render(values), "Deployment")
    container = _container(deployment)
    assert "HANDOFF_AUTH_SIGNING_KEYS_FILE" not in _env(container)
    assert [m["name"] for m in container["volumeMounts"]] == ["tmp"]
    assert [v["name"] for v in deployment["spec"]["template"]["spec"]["volumes"]] == ["tmp"]


def test_settings_come_from_the_config_map(default_manifests: list[Manifest]) -> None:
    container = _container(_one(default_manifests, "Deployment"))
    assert container["envFrom"] == [{"configMapRef": {"name": FULLNAME}}]
    assert _config(default_manifests) == {
        "HANDOFF_LOG_LEVEL": "INFO",
        "HANDOFF_AUTO_MIGRATE": "false",
        "HANDOFF_DB_POOL_SIZE": "10",
        "OTEL_SDK_DISABLED": "true",
    }


def test_gc_threshold_only_when_set(render: Render) -> None:
    assert (
        _config(render({"config": {"gcGen0Threshold": 20000}}))["HANDOFF_GC_GEN0_THRESHOLD"]
        == "20000"
    )
    assert _config(render({"config": {"gcGen0Threshold": 0}}))["HANDOFF_GC_GEN0_THRESHOLD"] == "0"


def test_retention_and_limits_only_when_set(render: Render) -> None:
    defaults = _config(render({}))
    assert not {
        "HANDOFF_IDEMPOTENCY_RETENTION_HOURS",
        "HANDOFF_NALOXONE_MAX_QUANTITY",
        "HANDOFF_WORKLIST_MAX_REFERRALS",
        "HANDOFF_DB_STATEMENT_TIMEOUT_MS",
        "HANDOFF_MAX_CONCURRENT_PER_CLIENT",
    } & set(defaults)  # the app's defaults apply
    config = _config(
        render(
            {
                "config": {
                    "idempotencyRetentionHours": 72,
                    "naloxoneMaxQuantity": 20,
                    "worklistMaxReferrals": 500,
                    "statementTimeoutMs": 0,
                    "maxConcurrentPerClient": 4,
                }
            }
        )
    )
    assert config["HANDOFF_IDEMPOTENCY_RETENTION_HOURS"] == "72"
    assert config["HANDOFF_NALOXONE_MAX_QUANTITY"] == "20"
    assert config["HANDOFF_WORKLIST_MAX_REFERRALS"] == "500"
    assert config["HANDOFF_DB_STATEMENT_TIMEOUT_MS"] == "0"  # no limit, as set
    assert config["HANDOFF_MAX_CONCURRENT_PER_CLIENT"] == "4"


def test_production_settings(production_manifests: list[Manifest]) -> None:
    config = _config(production_manifests)
    assert config["HANDOFF_LOG_LEVEL"] == "WARNING"
    assert config["HANDOFF_AUTO_MIGRATE"] == "false"
    assert config["HANDOFF_PUBLIC_BASE_URL"] == "https://handoff.example.org"
    assert config["HANDOFF_DB_POOL_SIZE"] == "8"
    assert config["HANDOFF_MAX_BODY_BYTES"] == "10485760"
    assert config["HANDOFF_TRUSTED_PROXIES"] == "*"
    assert config["HANDOFF_DB_STATEMENT_TIMEOUT_MS"] == "15000"
    assert config["HANDOFF_AUTH_ISSUER"] == "https://idp.example.org/realms/handoff"
    assert config["HANDOFF_AUTH_JWKS_URL"] == (
        "https://idp.example.org/realms/handoff/protocol/openid-connect/certs"
    )
    assert config["HANDOFF_AUTH_AUDIENCE"] == "https://handoff.example.org/fhir"
    assert config["HANDOFF_AUTH_ORGANIZATION_CLAIM"] == "org_id"


def test_otel_settings_only_when_enabled(
    default_manifests: list[Manifest], production_manifests: list[Manifest]
) -> None:
    assert not [key for key in _config(default_manifests) if key.startswith("OTEL_EXPORTER")]
    config = _config(production_manifests)
    assert "OTEL_SDK_DISABLED" not in config
    assert config["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector.observability.svc:4318"
    assert config["OTEL_EXPORTER_OTLP_PROTOCOL"] == "http/protobuf"
    assert config["OTEL_SERVICE_NAME"] == "handoff-api"
    attributes = dict(item.split("=", 1) for item in config["OTEL_RESOURCE_ATTRIBUTES"].split(","))
    assert attributes == {
        "service.namespace": NAMESPACE,
        "k8s.namespace.name": NAMESPACE,
        "service.version": "1.4.2",
        "deployment.environment": "production",
    }


def test_otel_service_name_defaults_to_the_release(render: Render) -> None:
    config = _config(render({"otel": {"enabled": True}}))
    assert config["OTEL_SERVICE_NAME"] == FULLNAME


def test_extra_env_is_appended(production_manifests: list[Manifest]) -> None:
    env = _env(_container(_one(production_manifests, "Deployment")))
    assert env["HANDOFF_DB_POOL_TIMEOUT"] == {"name": "HANDOFF_DB_POOL_TIMEOUT", "value": "5"}
    assert env["OTEL_EXPORTER_OTLP_HEADERS"]["valueFrom"] == {
        "secretKeyRef": {"name": "otel-collector-auth", "key": "headers"}
    }


def test_config_change_rolls_the_pods(helm: str, tmp_path: Path) -> None:
    def checksum(level: str) -> str:
        manifests = _render(helm, tmp_path=tmp_path, values={"config": {"logLevel": level}})
        deployment = _one(manifests, "Deployment")
        value: str = deployment["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
        return value

    assert checksum("INFO") != checksum("DEBUG")
    assert checksum("INFO") == checksum("INFO")


def test_image_tag_defaults_to_app_version_and_digest_wins(
    default_manifests: list[Manifest], render: Render
) -> None:
    app_version = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    image = _container(_one(default_manifests, "Deployment"))["image"]
    assert image == f"ghcr.io/example/handoff:{app_version}"
    digest = "sha256:" + hashlib.sha256(b"image").hexdigest()
    manifests = render({"image": {"digest": digest}})
    assert _container(_one(manifests, "Deployment"))["image"] == (
        f"ghcr.io/example/handoff@{digest}"
    )
    assert _container(_one(manifests, "Job"))["image"] == f"ghcr.io/example/handoff@{digest}"


# --- Service, Ingress, HPA, PDB -------------------------------------------------------------------


def test_service_selects_server_pods_not_the_migration_job(
    default_manifests: list[Manifest],
) -> None:
    service = _one(default_manifests, "Service")
    pod_labels = _one(default_manifests, "Deployment")["spec"]["template"]["metadata"]["labels"]
    job_labels = _one(default_manifests, "Job")["spec"]["template"]["metadata"]["labels"]
    assert _matches(service["spec"]["selector"], pod_labels)
    assert not _matches(service["spec"]["selector"], job_labels)
    assert service["spec"]["ports"] == [
        {"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}
    ]
    pdb = _one(default_manifests, "PodDisruptionBudget")
    assert _matches(pdb["spec"]["selector"]["matchLabels"], pod_labels)
    assert not _matches(pdb["spec"]["selector"]["matchLabels"], job_labels)


def test_ingress_routes_to_the_service_with_tls(production_manifests: list[Manifest]) -> None:
    ingress = _one(production_manifests, "Ingress")
    service = _one(production_manifests, "Service")
    assert ingress["spec"]["ingressClassName"] == "nginx"
    assert ingress["spec"]["tls"] == [
        {"secretName": "handoff-example-org-tls", "hosts": ["handoff.example.org"]}
    ]
    (rule,) = ingress["spec"]["rules"]
    assert rule["host"] == "handoff.example.org"
    (path,) = rule["http"]["paths"]
    assert path["backend"]["service"] == {
        "name": service["metadata"]["name"],
        "port": {"number": service["spec"]["ports"][0]["port"]},
    }
    assert ingress["metadata"]["annotations"] == {
        "cert-manager.io/cluster-issuer": "letsencrypt",
        "nginx.ingress.kubernetes.io/limit-rps": "50",
        "nginx.ingress.kubernetes.io/limit-burst-multiplier": "5",
        "nginx.ingress.kubernetes.io/limit-connections": "20",
    }


def test_ingress_rate_limits_only_when_set(render: Render) -> None:
    ingress = {"enabled": True, "annotations": {"example.org/team": "care"}}
    plain = _one(render({"ingress": ingress}), "Ingress")
    assert plain["metadata"]["annotations"] == {"example.org/team": "care"}
    bare = _one(render({"ingress": {"enabled": True}}), "Ingress")
    assert "annotations" not in bare["metadata"]
    connections = _one(
        render({"ingress": {**ingress, "rateLimit": {"connections": 10}}}), "Ingress"
    )
    assert connections["metadata"]["annotations"] == {
        "example.org/team": "care",
        "nginx.ingress.kubernetes.io/limit-connections": "10",
    }
    # An annotation given by hand wins over the one rateLimit would write.
    annotations = {"nginx.ingress.kubernetes.io/limit-rps": "7"}
    chosen = _one(
        render(
            {"ingress": {"enabled": True, "annotations": annotations, "rateLimit": {"rps": 50}}}
        ),
        "Ingress",
    )
    assert chosen["metadata"]["annotations"] == {
        "nginx.ingress.kubernetes.io/limit-rps": "7",
        "nginx.ingress.kubernetes.io/limit-burst-multiplier": "5",
    }


def test_hpa_absent_by_default_and_owns_replicas_when_enabled(
    default_manifests: list[Manifest], production_manifests: list[Manifest]
) -> None:
    assert not [m for m in default_manifests if m["kind"] == "HorizontalPodAutoscaler"]
    hpa = _one(production_manifests, "HorizontalPodAutoscaler")
    deployment = _one(production_manifests, "Deployment")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 10)
    targets = {
        metric["resource"]["name"]: metric["resource"]["target"]["averageUtilization"]
        for metric in hpa["spec"]["metrics"]
    }
    assert targets == {"cpu": 65, "memory": 80}
    # A fixed replica count would fight the autoscaler on every upgrade.
    assert "replicas" not in deployment["spec"]


def test_cpu_autoscaling_without_a_cpu_request_is_refused(helm: str, tmp_path: Path) -> None:
    # null deletes the default request (Helm semantics).
    values = {"autoscaling": {"enabled": True}, "resources": {"requests": {"cpu": None}}}
    result = _template(helm, tmp_path=tmp_path, values=values)
    assert result.returncode != 0
    assert "resources.requests.cpu" in result.stderr


def test_autoscaling_with_max_below_min_is_refused(helm: str, tmp_path: Path) -> None:
    values = {"autoscaling": {"enabled": True, "minReplicas": 4, "maxReplicas": 2}}
    result = _template(helm, tmp_path=tmp_path, values=values)
    assert result.returncode != 0
    assert "maxReplicas must be at least" in result.stderr


def test_pdb_allows_one_disruption_by_default(
    default_manifests: list[Manifest], production_manifests: list[Manifest], render: Render
) -> None:
    assert _one(default_manifests, "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1
    production = _one(production_manifests, "PodDisruptionBudget")["spec"]
    assert production["minAvailable"] == 2
    assert "maxUnavailable" not in production
    percent = render({"podDisruptionBudget": {"maxUnavailable": "50%"}})
    assert _one(percent, "PodDisruptionBudget")["spec"]["maxUnavailable"] == "50%"
    disabled = render({"podDisruptionBudget": {"enabled": False}})
    assert "PodDisruptionBudget" not in _kinds(disabled)


# --- migration Job ------------------------------------------------------------------------------


def test_migration_job_is_a_pre_install_and_pre_upgrade_hook(
    default_manifests: list[Manifest],
) -> None:
    job = _one(default_manifests, "Job")
    annotations = job["metadata"]["annotations"]
    assert set(annotations["helm.sh/hook"].split(",")) == {"pre-install", "pre-upgrade"}
    assert set(annotations["helm.sh/hook-delete-policy"].split(",")) == {
        "before-hook-creation",
        "hook-succeeded",
    }
    assert job["spec"]["backoffLimit"] == 2
    assert job["spec"]["activeDeadlineSeconds"] == 600
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    assert _container(job)["args"] == ["migrate"]


def test_migration_job_shares_security_and_database_secret(
    production_manifests: list[Manifest],
) -> None:
    job = _one(production_manifests, "Job")
    deployment = _one(production_manifests, "Deployment")
    job_pod = job["spec"]["template"]["spec"]
    app_pod = deployment["spec"]["template"]["spec"]
    assert job_pod["securityContext"] == app_pod["securityContext"]
    assert _container(job)["securityContext"] == _container(deployment)["securityContext"]
    assert _container(job)["image"] == _container(deployment)["image"]
    job_env = _env(_container(job))
    assert job_env["HANDOFF_DATABASE_URL"] == _env(_container(deployment))["HANDOFF_DATABASE_URL"]
    assert job_env["HANDOFF_LOG_LEVEL"]["value"] == "WARNING"
    # The root filesystem is read-only here too.
    assert {"name": "tmp", "mountPath": "/tmp"} in _container(job)["volumeMounts"]


def test_migration_job_does_not_depend_on_release_objects(
    default_manifests: list[Manifest],
) -> None:
    # On first install the hook runs before the ConfigMap and ServiceAccount exist.
    job = _one(default_manifests, "Job")
    pod = job["spec"]["template"]["spec"]
    assert "serviceAccountName" not in pod
    assert pod["automountServiceAccountToken"] is False
    assert "envFrom" not in _container(job)


def test_migration_job_uses_a_named_existing_service_account(render: Render) -> None:
    pod = _one(render({"migrations": {"serviceAccountName": "db-migrator"}}), "Job")
    assert pod["spec"]["template"]["spec"]["serviceAccountName"] == "db-migrator"
    existing = {"serviceAccount": {"create": False, "name": "handoff-workload"}}
    manifests = render(existing)
    assert "ServiceAccount" not in _kinds(manifests)
    job_pod = _one(manifests, "Job")["spec"]["template"]["spec"]
    app_pod = _one(manifests, "Deployment")["spec"]["template"]["spec"]
    assert job_pod["serviceAccountName"] == app_pod["serviceAccountName"] == "handoff-workload"


def test_migrations_can_be_disabled(render: Render) -> None:
    assert "Job" not in _kinds(render({"migrations": {"enabled": False}}))


# --- values.schema.json -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({"replicaCount": "two"}, "/replicaCount"),
        ({"replicas": 3}, "replicas"),  # misspelt key: the schema is closed
        ({"config": {"logLevel": "verbose"}}, "/config/logLevel"),
        ({"config": {"publicBaseUrl": "handoff.example.org"}}, "/config/publicBaseUrl"),
        ({"database": {"existingSecret": ""}}, "/database/existingSecret"),
        ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
        ({"autoscaling": {"targetCPUUtilizationPercentage": 150}}, "targetCPUUtilization"),
        ({"podDisruptionBudget": {"maxUnavailable": "half"}}, "/podDisruptionBudget"),
        ({"extraEnv": [{"value": "no name"}]}, "/extraEnv/0"),
        ({"config": {"gcGen0Threshold": -1}}, "/config/gcGen0Threshold"),
        ({"config": {"idempotencyRetentionHours": 0}}, "/config/idempotencyRetentionHours"),
        ({"config": {"naloxoneMaxQuantity": 0}}, "/config/naloxoneMaxQuantity"),
        ({"config": {"worklistMaxReferrals": 0}}, "/config/worklistMaxReferrals"),
        ({"config": {"statementTimeoutMs": -1}}, "/config/statementTimeoutMs"),
        ({"config": {"maxConcurrentPerClient": 0}}, "/config/maxConcurrentPerClient"),
        ({"ingress": {"rateLimit": {"rps": -1}}}, "/ingress/rateLimit/rps"),
        ({"ingress": {"rateLimit": {"perMinute": 5}}}, "perMinute"),
    ],
)
def test_schema_rejects_bad_values(
    helm: str, tmp_path: Path, values: dict[str, Any], complaint: str
) -> None:
    template = _template(helm, tmp_path=tmp_path, values=values)
    assert template.returncode != 0
    assert "schema" in template.stderr
    assert complaint in template.stderr
    lint = _run(helm, ["lint", str(CHART), *_value_args(tmp_path, values, ())])
    assert lint.returncode != 0
    assert complaint in lint.stdout + lint.stderr


def test_schema_describes_every_default_value() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())

    def walk(values: dict[str, Any], node: dict[str, Any], where: str) -> None:
        assert node.get("additionalProperties") is False, f"{where or '/'} is not closed"
        for key, value in values.items():
            assert key in node["properties"], f"{where}/{key} missing from the schema"
            child = node["properties"][key]
            if isinstance(value, dict) and child.get("additionalProperties") is False:
                walk(value, child, f"{where}/{key}")

    walk(defaults, schema, "")
