"""The Helm chart, rendered offline with the real helm and checked without a cluster.

Every rendered object is validated against the Kubernetes OpenAPI schemas (kubernetes-validate, strict: unknown
fields fail), the custom resources (KEDA, prometheus-operator) against the fields we rely on, and the connector
YAML each ConfigMap carries is loaded with the connector's own config loader, in the environment the pod would
give it. No cluster runs here: scheduling, the slot hand-over and KEDA's scaling are argued in docs/deploy.md.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest

from connector.config import ConnectorConfig, load_config
from tests.deploy.conftest import CHART, HELM, REPO_ROOT, Render, run_helm

# The first test builds helm when no cached binary exists: minutes on a busy machine.
pytestmark = [pytest.mark.unit, pytest.mark.timeout(1800)]

CASES = {
    "defaults": (),
    "sink-keda": ("sink-keda-values.yaml",),
    "sidecar": ("sidecar-values.yaml",),
    "servicemonitor": ("servicemonitor-values.yaml",),
}
# The oldest Kubernetes the chart supports (README: PodDisruptionBudget unhealthyPodEvictionPolicy) and the newest.
KUBERNETES_VERSIONS = ("1.27.0", kubernetes_validate.latest_version())
# What docs/deploy.md and values.yaml tell users to put into the credentials Secret.
CREDENTIALS_SECRET_KEYS = ("CDC_SOURCE_DSN", "CDC_TARGET_DSN")
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:-[^}]*)?\}")

# The fields of the custom resources the chart renders, as their CRDs type them (keda.sh/v1alpha1
# ScaledObject, monitoring.coreos.com/v1 ServiceMonitor): no CRD schema ships with kubernetes-validate.
_NAME = {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 63}
_METADATA = {"type": "object", "required": ["name"], "properties": {"name": _NAME, "labels": {"type": "object"}}}
CUSTOM_SCHEMAS: dict[tuple[str, str], dict[str, Any]] = {
    ("keda.sh/v1alpha1", "ScaledObject"): {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "metadata": _METADATA,
            "spec": {
                "type": "object",
                "required": ["scaleTargetRef", "triggers"],
                "additionalProperties": False,
                "properties": {
                    "scaleTargetRef": {
                        "type": "object",
                        "required": ["name"],
                        "additionalProperties": False,
                        "properties": {"apiVersion": {"type": "string"}, "kind": {"type": "string"}, "name": _NAME},
                    },
                    "minReplicaCount": {"type": "integer", "minimum": 0},
                    "maxReplicaCount": {"type": "integer", "minimum": 1},
                    "pollingInterval": {"type": "integer", "minimum": 1},
                    "cooldownPeriod": {"type": "integer", "minimum": 0},
                    "triggers": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "required": ["type", "metadata"],
                            "additionalProperties": False,
                            "properties": {
                                "type": {"const": "kafka"},
                                # KEDA reads trigger metadata as map[string]string: a number fails to apply.
                                "metadata": {
                                    "type": "object",
                                    "required": ["consumerGroup", "lagThreshold"],
                                    "additionalProperties": {"type": "string"},
                                },
                                "authenticationRef": {
                                    "type": "object",
                                    "required": ["name"],
                                    "properties": {"name": _NAME},
                                },
                            },
                        },
                    },
                },
            },
        },
    },
    ("monitoring.coreos.com/v1", "ServiceMonitor"): {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "metadata": _METADATA,
            "spec": {
                "type": "object",
                "required": ["selector", "endpoints"],
                "additionalProperties": False,
                "properties": {
                    "podTargetLabels": {"type": "array", "items": {"type": "string"}},
                    "selector": {
                        "type": "object",
                        "required": ["matchLabels"],
                        "properties": {"matchLabels": {"type": "object", "additionalProperties": {"type": "string"}}},
                    },
                    "endpoints": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {
                                "port": {"type": "string"},
                                "path": {"type": "string", "pattern": "^/"},
                                "interval": {"type": "string", "pattern": r"^(\d+(ms|s|m|h))+$"},
                                "scrapeTimeout": {"type": "string", "pattern": r"^(\d+(ms|s|m|h))+$"},
                            },
                        },
                    },
                },
            },
        },
    },
}


# -- reading rendered objects ------------------------------------------------------------------------------


def of_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def named(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [o for o in of_kind(objects, kind) if o["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind} {name}: {[o['metadata']['name'] for o in of_kind(objects, kind)]}"
    return found[0]


def connector(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    found = [c for c in containers if c["name"] == "connector"]
    assert len(found) == 1
    return found[0]


def pod_environment(container: dict[str, Any]) -> dict[str, str]:
    """The environment the container would get: plain values, and stand-ins for what Secrets provide."""
    env: dict[str, str] = {}
    for entry in container.get("envFrom", []):
        assert set(entry) == {"secretRef"}, entry
        env.update({key: f"secret:{entry['secretRef']['name']}:{key}" for key in CREDENTIALS_SECRET_KEYS})
    for entry in container.get("env", []):
        if "value" in entry:
            env[entry["name"]] = entry["value"]
        else:
            ref = entry["valueFrom"]["secretKeyRef"]
            env[entry["name"]] = f"secret:{ref['name']}:{ref['key']}"
    return env


def config_text(objects: list[dict[str, Any]], deployment: dict[str, Any]) -> str:
    """The connector YAML the deployment's connector container reads at /etc/cdc/connector.yaml."""
    container = connector(deployment)
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == "/etc/cdc/connector.yaml")
    volume = next(v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"])
    config_map = named(objects, "ConfigMap", volume["configMap"]["name"])
    return str(config_map["data"][mount["subPath"]])


def loaded_config(objects: list[dict[str, Any]], deployment: dict[str, Any], tmp_path: Path) -> ConnectorConfig:
    path = tmp_path / f"{deployment['metadata']['name']}.yaml"
    path.write_text(config_text(objects, deployment), encoding="utf-8")
    return load_config(path, env=pod_environment(connector(deployment)))


def deployments(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    found = of_kind(objects, "Deployment")
    assert found
    return found


# -- every object is valid ---------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_every_rendered_object_is_valid_kubernetes(render: Render, case: str) -> None:
    objects = render(*CASES[case])
    assert objects
    for obj in objects:
        schema = CUSTOM_SCHEMAS.get((obj["apiVersion"], obj["kind"]))
        if schema is not None:
            jsonschema.validate(obj, schema)
            continue
        for version in KUBERNETES_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{obj['kind']} {obj['metadata']['name']} on Kubernetes {version}: {exc.message}")


def test_the_custom_resource_schemas_catch_what_keda_would_refuse() -> None:
    bad = {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": {"name": "x"},
        "spec": {
            "scaleTargetRef": {"name": "x"},
            "triggers": [{"type": "kafka", "metadata": {"consumerGroup": "g", "lagThreshold": 5}}],
        },
    }
    with pytest.raises(jsonschema.ValidationError, match="is not of type 'string'"):
        jsonschema.validate(bad, CUSTOM_SCHEMAS[("keda.sh/v1alpha1", "ScaledObject")])


@pytest.mark.parametrize("case", CASES)
def test_helm_lint_is_clean(helm: Path, case: str) -> None:
    args: list[str | Path] = ["lint", "--strict", CHART]
    for name in CASES[case]:
        args += ["--values", CHART / "ci" / name]
    done = run_helm(*args)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 chart(s) failed" in done.stdout
    assert "[WARNING]" not in done.stdout and "[ERROR]" not in done.stdout


# -- the config each pod reads -----------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_each_config_loads_with_the_connector_loader_in_the_pods_environment(
    render: Render, case: str, tmp_path: Path
) -> None:
    objects = render(*CASES[case])
    for deployment in deployments(objects):
        config = loaded_config(objects, deployment, tmp_path)
        container = connector(deployment)
        port = next(p for p in container["ports"] if p["name"] == "http")
        assert config.server.enabled and config.server.host == "0.0.0.0"
        assert config.server.port == port["containerPort"]
        # The secrets come from Secrets, never from a plain value in the manifest.
        for side in (config.source, config.sink):
            if side is not None:
                assert side.dsn.get_secret_value().startswith("secret:cdc-connector-credentials:")
        plain = {e["name"] for e in container.get("env", []) if "value" in e}
        assert not plain & set(CREDENTIALS_SECRET_KEYS)


def test_a_variable_no_secret_provides_fails_the_load(render: Render, tmp_path: Path) -> None:
    objects = render(sets=("credentials.existingSecret=",))
    source = named(objects, "Deployment", "cdc-cdc-connector-source")
    assert "envFrom" not in connector(source)
    with pytest.raises(Exception, match="CDC_SOURCE_DSN is not set"):
        loaded_config(objects, source, tmp_path)


def test_config_variables_are_left_for_the_connector(render: Render) -> None:
    objects = render()
    text = config_text(objects, named(objects, "Deployment", "cdc-cdc-connector-source"))
    assert {m.group(1) for m in _VAR.finditer(text)} == {
        "CDC_KAFKA_BOOTSTRAP",
        "CDC_SCHEMA_REGISTRY_URL",
        "CDC_SOURCE_DSN",
    }


def test_secret_hooks_single_keys_and_mounted_certificates(render: Render, tmp_path: Path) -> None:
    objects = render(*CASES["servicemonitor"])
    sink = named(objects, "Deployment", "cdc-cdc-connector-sink")
    container = connector(sink)
    env = {e["name"]: e for e in container["env"]}
    assert env["CDC_REGISTRY_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "registry-user-cdc", "key": "password"}
    assert container["envFrom"] == [{"secretRef": {"name": "cdc-connector-credentials"}}]
    mount = next(m for m in container["volumeMounts"] if m["name"] == "tls")
    assert mount == {"name": "tls", "mountPath": "/etc/cdc/tls", "readOnly": True}
    volume = next(v for v in sink["spec"]["template"]["spec"]["volumes"] if v["name"] == "tls")
    assert volume["secret"]["secretName"] == "cdc-connector-tls"
    config = loaded_config(objects, sink, tmp_path)
    assert config.kafka.properties["ssl.ca.location"].startswith(mount["mountPath"] + "/")


def test_without_a_tls_secret_nothing_is_mounted(render: Render) -> None:
    for deployment in deployments(render()):
        assert all(v["name"] != "tls" for v in deployment["spec"]["template"]["spec"]["volumes"])


def test_a_config_change_rolls_only_its_own_pods(render: Render) -> None:
    def checksums(objects: list[dict[str, Any]]) -> dict[str, str]:
        return {
            d["metadata"]["name"]: d["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
            for d in deployments(objects)
        }

    before = checksums(render())
    after = checksums(render(sets=("sink.config.sink.target_schema=other",)))
    assert before["cdc-cdc-connector-sink"] != after["cdc-cdc-connector-sink"]
    assert before["cdc-cdc-connector-source"] == after["cdc-cdc-connector-source"]


# -- probes, security, grace period ------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_probes_hit_the_connectors_own_endpoints(render: Render, case: str) -> None:
    readiness = {"source": "/healthz", "sink": "/readyz"}
    for deployment in deployments(render(*CASES[case])):
        component = deployment["metadata"]["labels"]["app.kubernetes.io/component"]
        container = connector(deployment)
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
        if component == "sidecar":
            # The connector's state must never take the application out of its Service.
            assert "readinessProbe" not in container
        else:
            assert container["readinessProbe"]["httpGet"] == {"path": readiness[component], "port": "http"}


@pytest.mark.parametrize("case", CASES)
def test_pods_run_unprivileged_on_a_read_only_root(render: Render, case: str) -> None:
    uid = re.search(r"useradd .*--uid (\d+)", (REPO_ROOT / "Dockerfile").read_text())
    assert uid is not None
    for deployment in deployments(render(*CASES[case])):
        pod = deployment["spec"]["template"]["spec"]
        if deployment["metadata"]["labels"]["app.kubernetes.io/component"] == "sidecar":
            assert "securityContext" not in pod  # the application's pod: its own business
        else:
            assert pod["securityContext"]["runAsNonRoot"] is True
            assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        container = connector(deployment)
        security = container["securityContext"]
        # A number: the image's USER is a name, which Kubernetes cannot verify as non-root.
        assert security["runAsNonRoot"] is True
        assert security["runAsUser"] == int(uid.group(1))
        assert security["readOnlyRootFilesystem"] is True
        assert security["allowPrivilegeEscalation"] is False
        assert security["capabilities"] == {"drop": ["ALL"]}
        assert not security.get("privileged", False)
        # The only writable place is /tmp (Python's temporary files), a size-bounded emptyDir.
        tmp = next(m for m in container["volumeMounts"] if m["mountPath"] == "/tmp")
        volume = next(v for v in pod["volumes"] if v["name"] == tmp["name"])
        assert volume["emptyDir"]["sizeLimit"]
        assert all(m.get("readOnly") for m in container["volumeMounts"] if m["mountPath"] != "/tmp")
        assert pod["serviceAccountName"]


@pytest.mark.parametrize("case", CASES)
def test_kubernetes_waits_longer_than_the_connectors_own_shutdown(render: Render, case: str, tmp_path: Path) -> None:
    objects = render(*CASES[case])
    for deployment in deployments(objects):
        config = loaded_config(objects, deployment, tmp_path)
        grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        assert grace >= config.shutdown_grace_s + 10


def test_resources_are_sized_from_the_measured_memory(render: Render) -> None:
    objects = render()
    mebibytes = {"Mi": 1, "Gi": 1024}

    def mib(quantity: str) -> int:
        number, unit = re.fullmatch(r"(\d+)(Mi|Gi)", quantity).groups()  # type: ignore[union-attr]
        return int(number) * mebibytes[unit]

    # Peak RSS measured by the benchmarks: source ~86 MiB, sink up to ~200 MiB.
    for component, peak in (("source", 86), ("sink", 200)):
        resources = connector(named(objects, "Deployment", f"cdc-cdc-connector-{component}"))["resources"]
        assert mib(resources["requests"]["memory"]) >= peak
        assert mib(resources["limits"]["memory"]) >= 2 * peak


# -- replica rules -----------------------------------------------------------------------------------------


def test_one_source_streams_and_the_others_wait_on_the_slot(render: Render, tmp_path: Path) -> None:
    objects = render()
    source = named(objects, "Deployment", "cdc-cdc-connector-source")
    assert source["spec"]["replicas"] == 2
    config = loaded_config(objects, source, tmp_path)
    assert config.source is not None and config.source.slot.on_conflict == "wait"
    assert config.sink is None
    # New pods join as standbys before the old ones stop together: one hand-over, to a new pod.
    assert source["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": "100%", "maxUnavailable": 0},
    }
    pdb = named(objects, "PodDisruptionBudget", "cdc-cdc-connector-source")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == source["spec"]["selector"]["matchLabels"]
    labels = source["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_a_second_source_that_would_fail_on_the_slot_is_refused(helm: Path) -> None:
    done = run_helm("template", "cdc", CHART, "--set", "source.config.source.slot.on_conflict=fail")
    assert done.returncode != 0
    assert "source.replicas > 1 needs source.config.source.slot.on_conflict: wait" in done.stderr
    single = run_helm(
        "template", "cdc", CHART, "--set", "source.config.source.slot.on_conflict=fail", "--set", "source.replicas=1"
    )
    assert single.returncode == 0, single.stderr


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (("sidecar.enabled=true",), "sidecar.enabled needs sidecar.config"),
        (("sidecar.enabled=true", "sidecar.config.name=x"), "sidecar.enabled needs sidecar.app"),
        (("sink.autoscaling.enabled=true", "sink.autoscaling.maxReplicas=0"), "maxReplicas must be at least"),
    ],
)
def test_incomplete_values_are_refused_with_the_fix(helm: Path, sets: tuple[str, ...], message: str) -> None:
    args: list[str | Path] = ["template", "cdc", CHART]
    for assignment in sets:
        args += ["--set", assignment]
    done = run_helm(*args)
    assert done.returncode != 0
    assert message in done.stderr


def test_sink_replicas_share_one_consumer_group(render: Render, tmp_path: Path) -> None:
    objects = render()
    sink = named(objects, "Deployment", "cdc-cdc-connector-sink")
    assert sink["spec"]["replicas"] == 3
    config = loaded_config(objects, sink, tmp_path)
    assert config.sink is not None and config.source is None
    assert config.group_id == "cdc-sink"
    pdb = named(objects, "PodDisruptionBudget", "cdc-cdc-connector-sink")
    assert pdb["spec"]["selector"]["matchLabels"] == sink["spec"]["selector"]["matchLabels"]
    assert of_kind(objects, "ScaledObject") == []


def test_keda_scales_the_sink_on_its_own_groups_lag(render: Render, tmp_path: Path) -> None:
    objects = render(*CASES["sink-keda"])
    assert of_kind(objects, "PodDisruptionBudget")[0]["metadata"]["name"] == "cdc-cdc-connector-sink"
    sink = named(objects, "Deployment", "cdc-cdc-connector-sink")
    assert "replicas" not in sink["spec"]  # KEDA owns the count
    scaled = named(objects, "ScaledObject", "cdc-cdc-connector-sink")
    assert scaled["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": sink["metadata"]["name"],
    }
    assert (scaled["spec"]["minReplicaCount"], scaled["spec"]["maxReplicaCount"]) == (3, 6)
    trigger = scaled["spec"]["triggers"][0]["metadata"]
    assert trigger["consumerGroup"] == loaded_config(objects, sink, tmp_path).group_id
    assert trigger["lagThreshold"] == "500"
    assert trigger["allowIdleConsumers"] == "false"
    # KEDA reads the brokers from the sink container's own variable, the one its config interpolates.
    env = {e["name"] for e in connector(sink)["env"]}
    assert trigger["bootstrapServersFromEnv"] in env
    assert "${" + trigger["bootstrapServersFromEnv"] + "}" in config_text(objects, sink)
    assert {"source", "sidecar"}.isdisjoint(
        d["metadata"]["labels"]["app.kubernetes.io/component"] for d in deployments(objects)
    )


def test_keda_group_follows_the_connectors_default_group(render: Render, tmp_path: Path) -> None:
    objects = render(*CASES["sink-keda"], sets=("sink.config.sink.group_id=null",))
    sink = named(objects, "Deployment", "cdc-cdc-connector-sink")
    group = loaded_config(objects, sink, tmp_path).group_id
    assert group == "cdc-cdc-sink"
    scaled = named(objects, "ScaledObject", "cdc-cdc-connector-sink")
    assert scaled["spec"]["triggers"][0]["metadata"]["consumerGroup"] == group


def test_sidecar_runs_beside_the_application_container(render: Render, tmp_path: Path) -> None:
    objects = render(*CASES["sidecar"])
    (pod_owner,) = deployments(objects)
    containers = pod_owner["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["app", "connector"]
    assert "securityContext" not in containers[0]
    assert containers[0]["image"] == "registry.example.com/shop/web:1.4.2"
    assert containers[0]["readinessProbe"] == {"httpGet": {"path": "/ready", "port": "web"}}
    config = loaded_config(objects, pod_owner, tmp_path)
    assert config.source is not None and config.source.slot.on_conflict == "wait"
    assert pod_owner["spec"]["replicas"] == 2


# -- scraping ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_metrics_are_scrapable(render: Render, case: str) -> None:
    objects = render(*CASES[case])
    monitors = {m["metadata"]["name"]: m for m in of_kind(objects, "ServiceMonitor")}
    for deployment in deployments(objects):
        name = deployment["metadata"]["name"]
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        service = named(objects, "Service", name)
        assert service["spec"]["selector"].items() <= labels.items()
        assert service["spec"]["publishNotReadyAddresses"] is True  # a snapshotting source is still scraped
        (port,) = service["spec"]["ports"]
        if case == "servicemonitor":
            assert "prometheus.io/scrape" not in annotations
            monitor = monitors[name]
            assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
            assert monitor["spec"]["endpoints"][0]["port"] == port["name"]
            assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
            assert "app.kubernetes.io/component" in monitor["spec"]["podTargetLabels"]
        else:
            assert not monitors
            container_port = connector(deployment)["ports"][0]["containerPort"]
            assert annotations["prometheus.io/scrape"] == "true"
            assert annotations["prometheus.io/port"] == str(container_port)
            assert annotations["prometheus.io/path"] == "/metrics"


# -- the plain manifests -----------------------------------------------------------------------------------


def test_plain_manifests_are_a_fresh_render_of_the_chart(helm: Path, tmp_path: Path) -> None:
    committed = REPO_ROOT / "deploy" / "manifests"
    script = REPO_ROOT / "deploy" / "tools" / "render-manifests"
    done = subprocess.run([str(script), str(tmp_path)], capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr
    fresh = sorted(p.name for p in tmp_path.glob("*.yaml"))
    assert fresh == sorted(p.name for p in committed.glob("*.yaml")) == ["cdc-connector.yaml", "sidecar.yaml"]
    for name in fresh:
        assert (committed / name).read_text() == (tmp_path / name).read_text(), (
            f"deploy/manifests/{name} is stale: run `make manifests`"
        )


def test_the_helm_wrapper_uses_a_given_binary_without_building(tmp_path: Path) -> None:
    fake = tmp_path / "fake-helm"
    fake.write_text('#!/bin/sh\necho "fake $*"\n')
    fake.chmod(0o755)
    done = subprocess.run(
        [str(HELM), "version"],
        capture_output=True,
        text=True,
        check=False,
        env={"HELM": str(fake), "PATH": "/usr/bin:/bin"},
    )
    assert done.stdout == "fake version\n"
