"""The deployment artefacts: the Helm chart in charts/ and the plain manifests in deploy/.

The chart is rendered and linted by Helm's own engine (helm-python-sdk binds the Go SDK), and
every rendered object and every YAML document in deploy/ is validated, strictly (unknown fields
fail), against the Kubernetes API schemas that kubernetes-validate bundles, for the oldest
supported version (1.28), the newest bundled one and one in between. No cluster, no network.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import all_versions

ROOT = Path(__file__).resolve().parents[1]
CHART_DIR = ROOT / "charts" / "smarter-device-manager"
DEPLOY_DIR = ROOT / "deploy"
EMBEDDED_CONFIG = ROOT / "src" / "smarter_device_manager" / "default_config.yaml"

RELEASE = "sdm"
NAMESPACE = "device-plugins"
MANIFEST_NAMESPACE = "smarter-device-management"
IMAGE_REPOSITORY = "ghcr.io/smarter-project/smarter-device-manager"
APP_VERSION = "2.2.0"

CONTAINER_PLUGIN_DIR = "/var/lib/kubelet/device-plugins"
K3S_PLUGIN_DIR = "/var/lib/rancher/k3s/agent/kubelet/device-plugins"
# The daemon's options (src/smarter_device_manager cli); anything else in args is a typo.
DAEMON_OPTIONS = {
    "--config",
    "--dev-dir",
    "--host-dev-dir",
    "--plugin-dir",
    "--resource-prefix",
    "--log-level",
    "--log-format",
    "--http-address",
    "--removal-grace",
}
PROMETHEUS_ANNOTATIONS = {
    "prometheus.io/scrape": "true",
    "prometheus.io/port": "8080",
    "prometheus.io/path": "/metrics",
}
EDGE_TOLERATION = {
    "key": "smarter.type",
    "operator": "Equal",
    "value": "edge",
    "effect": "NoSchedule",
}

Obj = dict[str, Any]


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def _schema_versions() -> list[str]:
    """1.28, the newest version kubernetes-validate ships, and one in between."""
    supported = [v for v in all_versions() if _version_key(v) >= (1, 28)]
    picked = [supported[0], supported[len(supported) // 2], supported[-1]]
    return sorted(set(picked), key=_version_key)


K8S_VERSIONS = _schema_versions()


# --- helpers -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chart() -> Iterator[helm.Chart]:
    with helm.Chart.load(CHART_DIR) as loaded:
        yield loaded


def render(chart: helm.Chart, values: Obj | None = None) -> dict[str, list[Obj]]:
    """Render with Helm's engine; template path -> the objects it produced."""
    out: dict[str, list[Obj]] = {}
    for path, text in chart.render(values, name=RELEASE, namespace=NAMESPACE).items():
        if path.endswith(".txt"):
            continue
        docs = [doc for doc in yaml.safe_load_all(text) if doc]
        if docs:  # templates switched off by a value (dra-*.yaml) render nothing
            out[path] = docs
    return out


def objects(chart: helm.Chart, values: Obj | None = None) -> list[Obj]:
    return [obj for objs in render(chart, values).values() for obj in objs]


def one(objs: list[Obj], kind: str) -> Obj:
    found = [obj for obj in objs if obj["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def daemon_container(pod_spec: Obj) -> Obj:
    containers = pod_spec["containers"]
    assert [c["name"] for c in containers] == ["smarter-device-manager"]
    result: Obj = containers[0]
    return result


def volumes(pod_spec: Obj) -> dict[str, Obj]:
    return {v["name"]: v for v in pod_spec["volumes"]}


def mounts(container: Obj) -> dict[str, Obj]:
    return {m["mountPath"]: m for m in container["volumeMounts"]}


def host_path_of(pod_spec: Obj, container: Obj, mount_path: str) -> str:
    """The host path behind the container's mount at ``mount_path``."""
    volume = volumes(pod_spec)[mounts(container)[mount_path]["name"]]
    path: str = volume["hostPath"]["path"]
    return path


def load_documents(path: Path) -> list[Obj]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


def deploy_files() -> list[Path]:
    return sorted(DEPLOY_DIR.glob("*.yaml"))


def validate_strict(obj: Obj, version: str) -> None:
    """Validate against the API schema of ``version``; unknown fields fail, a missing schema too."""
    problem = None
    try:
        kubernetes_validate.validate(obj, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        where = ".".join(str(p) for p in exc.path) or "(top)"
        problem = f"{where}: {exc.message}"
    if problem is not None:
        name = f"{obj['kind']}/{obj['metadata'].get('name')}"
        pytest.fail(f"{name} is not valid for Kubernetes {version}: {problem}", pytrace=False)


def assert_daemon_pod_spec(spec: Obj, plugin_host_dir: str) -> None:
    """What every deployment of the daemon must get right, whatever its packaging."""
    container = daemon_container(spec)
    assert container["command"] == ["smarter-device-manager"]
    assert container["args"][0] == "serve"
    for arg in container["args"][1:]:
        assert arg.split("=", 1)[0] in DAEMON_OPTIONS, f"unknown option {arg!r}"
    assert container["image"].startswith(IMAGE_REPOSITORY + ":")

    # Least privilege: uid 0 for the root-owned socket directory, and nothing more.
    assert spec["securityContext"]["runAsUser"] == 0
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    security = container["securityContext"]
    assert security["privileged"] is False
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert "hostNetwork" not in spec and "hostPID" not in spec
    assert spec["automountServiceAccountToken"] is False
    assert spec["priorityClassName"] == "system-node-critical"
    assert spec["terminationGracePeriodSeconds"] == 10
    assert EDGE_TOLERATION in spec["tolerations"]

    # Mounts: the kubelet's socket dir (rw), the host's /dev and /sys read-only at /dev and
    # /sys (sysfs attributes select devices), the config; no subPath (a subPath mount would
    # never see ConfigMap updates).
    by_path = mounts(container)
    assert set(by_path) == {CONTAINER_PLUGIN_DIR, "/dev", "/sys", "/root/config"}
    assert not by_path[CONTAINER_PLUGIN_DIR].get("readOnly", False)
    assert by_path["/dev"]["readOnly"] is True
    assert by_path["/sys"]["readOnly"] is True
    assert host_path_of(spec, container, "/sys") == "/sys"
    assert volumes(spec)[by_path["/sys"]["name"]]["hostPath"]["type"] == "Directory"
    assert all("subPath" not in m for m in by_path.values())
    assert host_path_of(spec, container, CONTAINER_PLUGIN_DIR) == plugin_host_dir
    assert host_path_of(spec, container, "/dev") == "/dev"
    config_volume = volumes(spec)[by_path["/root/config"]["name"]]
    assert "configMap" in config_volume
    # The runtime cannot create the default /dev/termination-log in a read-only host /dev.
    assert not container["terminationMessagePath"].startswith("/dev/")

    assert container["resources"] == {
        "requests": {"cpu": "10m", "memory": "32Mi"},
        "limits": {"cpu": "200m", "memory": "64Mi"},
    }


def assert_network_policy(policy: Obj, pod_labels: dict[str, str], port: int | None = 8080) -> None:
    """No egress at all; ingress only to the HTTP port (or none without HTTP)."""
    spec = policy["spec"]
    assert spec["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    assert spec["egress"] == []
    if port is None:
        assert spec["ingress"] == []
    else:
        assert [rule["ports"] for rule in spec["ingress"]] == [[{"port": port, "protocol": "TCP"}]]


def assert_http_on(spec: Obj, port: int = 8080) -> None:
    container = daemon_container(spec)
    assert f"--http-address=0.0.0.0:{port}" in container["args"]
    assert container["ports"] == [{"name": "http", "containerPort": port, "protocol": "TCP"}]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}


# --- the chart: metadata and lint --------------------------------------------------------------


def test_chart_metadata(chart: helm.Chart) -> None:
    meta = chart.metadata
    assert meta["apiVersion"] == "v2"
    assert meta["name"] == "smarter-device-manager"
    assert meta["version"] == "2.2.0"
    assert meta["appVersion"] == APP_VERSION
    assert chart.schema is not None


LINT_CASES: list[Obj] = [
    {},
    {"kubeletPluginDir": K3S_PLUGIN_DIR},
    {"http": {"enabled": False}},
    {"config": [{"devicematch": "^ttyUSB[0-9]*$", "nummaxdevices": 2}]},
    {"extraArgs": ["--log-level=debug"], "image": {"tag": "2.0.1"}},
    {"nodeSelector": None, "tolerations": [], "metrics": {"annotations": None}},
]


@pytest.mark.parametrize("values", LINT_CASES, ids=lambda v: ",".join(v) or "defaults")
def test_lint_passes(values: Obj) -> None:
    report = helm.lint(CHART_DIR, values, strict=True, namespace=NAMESPACE)
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


# --- the chart: rendered content ---------------------------------------------------------------


def test_default_render(chart: helm.Chart) -> None:
    rendered = render(chart)
    assert set(rendered) == {
        "smarter-device-manager/templates/daemonset.yaml",
        "smarter-device-manager/templates/configmap.yaml",
        "smarter-device-manager/templates/networkpolicy.yaml",
    }
    objs = objects(chart)
    daemonset = one(objs, "DaemonSet")
    configmap = one(objs, "ConfigMap")
    policy = one(objs, "NetworkPolicy")
    assert_network_policy(policy, daemonset["spec"]["template"]["metadata"]["labels"])
    for obj in (daemonset, configmap, policy):
        assert obj["metadata"]["namespace"] == NAMESPACE
        assert obj["metadata"]["name"] == f"{RELEASE}-smarter-device-manager"

    template = daemonset["spec"]["template"]
    spec = template["spec"]
    assert_daemon_pod_spec(spec, CONTAINER_PLUGIN_DIR)
    assert_http_on(spec)
    container = daemon_container(spec)
    assert container["image"] == f"{IMAGE_REPOSITORY}:{APP_VERSION}"
    assert container["imagePullPolicy"] == "IfNotPresent"
    assert container["args"] == [
        "serve",
        "--resource-prefix=smarter-devices",
        "--removal-grace=300",
        "--log-level=info",
        "--log-format=text",
        "--http-address=0.0.0.0:8080",
    ]
    assert spec["nodeSelector"] == {"smarter-device-manager": "enabled"}
    assert spec["tolerations"] == [EDGE_TOLERATION]
    assert volumes(spec)["config"]["configMap"]["name"] == configmap["metadata"]["name"]
    assert "data" in configmap and set(configmap["data"]) == {"conf.yaml"}

    # Scrape annotations on; no config checksum (the daemon reloads the ConfigMap live).
    annotations = template["metadata"]["annotations"]
    assert annotations == PROMETHEUS_ANNOTATIONS
    assert not any("checksum" in key for key in annotations)

    selector = daemonset["spec"]["selector"]["matchLabels"]
    assert selector.items() <= template["metadata"]["labels"].items()
    assert daemonset["spec"]["updateStrategy"]["type"] == "RollingUpdate"
    assert "maxSurge" not in daemonset["spec"]["updateStrategy"].get("rollingUpdate", {})


def test_network_policy_follows_http_settings_and_can_be_turned_off(chart: helm.Chart) -> None:
    labels = {"app.kubernetes.io/name": "smarter-device-manager", "app.kubernetes.io/instance": RELEASE}
    assert_network_policy(one(objects(chart, {"http": {"port": 9100}}), "NetworkPolicy"), labels,
                          port=9100)
    assert_network_policy(one(objects(chart, {"http": {"enabled": False}}), "NetworkPolicy"),
                          labels, port=None)
    peers = [{"namespaceSelector": {"matchLabels": {"name": "monitoring"}}}]
    policy = one(objects(chart, {"networkPolicy": {"ingressFrom": peers}}), "NetworkPolicy")
    assert policy["spec"]["ingress"][0]["from"] == peers
    kinds = [o["kind"] for o in objects(chart, {"networkPolicy": {"enabled": False}})]
    assert "NetworkPolicy" not in kinds


def test_image_digest_pins_the_image(chart: helm.Chart) -> None:
    digest = "sha256:" + "ab" * 32
    daemonset = one(objects(chart, {"image": {"digest": digest}}), "DaemonSet")
    container = daemon_container(daemonset["spec"]["template"]["spec"])
    assert container["image"] == f"{IMAGE_REPOSITORY}:{APP_VERSION}@{digest}"
    with pytest.raises(helm.HelmError):
        objects(chart, {"image": {"digest": "latest"}})


def test_k3s_plugin_dir(chart: helm.Chart) -> None:
    spec = one(objects(chart, {"kubeletPluginDir": K3S_PLUGIN_DIR}), "DaemonSet")["spec"]
    pod_spec = spec["template"]["spec"]
    assert_daemon_pod_spec(pod_spec, K3S_PLUGIN_DIR)
    assert volumes(pod_spec)["device-plugins"]["hostPath"] == {
        "path": K3S_PLUGIN_DIR,
        "type": "Directory",
    }
    # Mounted where the daemon looks by default, so no --plugin-dir is needed.
    assert not any(a.startswith("--plugin-dir") for a in daemon_container(pod_spec)["args"])


def test_http_disabled_drops_ports_probes_and_scrape_annotations(chart: helm.Chart) -> None:
    daemonset = one(objects(chart, {"http": {"enabled": False}}), "DaemonSet")
    template = daemonset["spec"]["template"]
    container = daemon_container(template["spec"])
    assert not any(a.startswith("--http-address") for a in container["args"])
    for key in ("ports", "livenessProbe", "readinessProbe"):
        assert key not in container
    assert "annotations" not in template["metadata"]


def test_each_probe_can_be_turned_off(chart: helm.Chart) -> None:
    values = {"probes": {"readiness": {"enabled": False}}}
    daemonset = one(objects(chart, values), "DaemonSet")
    container = daemon_container(daemonset["spec"]["template"]["spec"])
    assert "readinessProbe" not in container
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"


def test_custom_port_follows_into_args_probe_and_annotation(chart: helm.Chart) -> None:
    template = one(objects(chart, {"http": {"port": 9100}}), "DaemonSet")["spec"]["template"]
    assert_http_on(template["spec"], port=9100)
    assert template["metadata"]["annotations"]["prometheus.io/port"] == "9100"


def test_pod_annotations_merge_with_scrape_annotations(chart: helm.Chart) -> None:
    values = {"podAnnotations": {"example.com/team": "edge", "prometheus.io/path": "/m"}}
    template = one(objects(chart, values), "DaemonSet")["spec"]["template"]
    annotations = template["metadata"]["annotations"]
    assert annotations["example.com/team"] == "edge"
    assert annotations["prometheus.io/path"] == "/m"  # podAnnotations win
    assert annotations["prometheus.io/scrape"] == "true"


def test_custom_config_renders_into_conf_yaml(chart: helm.Chart) -> None:
    rules = [
        {"devicematch": "^ttyUSB[0-9]*$", "nummaxdevices": 2},
        {"devicematch": "^serial/by-id/usb-FTDI.*$", "nummaxdevices": 1},
        {"devicematch": "^vcs$", "nummaxdevices": 0},
        {"devicematch": "^1wire$", "nummaxdevices": 1000},
    ]
    configmap = one(objects(chart, {"config": rules}), "ConfigMap")
    parsed = yaml.safe_load(configmap["data"]["conf.yaml"])
    assert parsed == rules
    assert all(type(rule["nummaxdevices"]) is int for rule in parsed)


def test_default_config_renders_the_default_rules(chart: helm.Chart) -> None:
    configmap = one(objects(chart), "ConfigMap")
    assert yaml.safe_load(configmap["data"]["conf.yaml"]) == chart.values["config"]


def test_extra_args_env_and_daemon_options(chart: helm.Chart) -> None:
    values = {
        "extraArgs": ["--dev-dir=/dev", "--log-level=debug"],
        "extraEnv": [{"name": "SDM_REMOVAL_GRACE", "value": "30"}],
        "logFormat": "json",
        "resourcePrefix": "devices.example.com",
        "removalGrace": 1000000,
        "hostDev": "/host/dev",
    }
    pod_spec = one(objects(chart, values), "DaemonSet")["spec"]["template"]["spec"]
    container = daemon_container(pod_spec)
    assert container["args"] == [
        "serve",
        "--host-dev-dir=/host/dev",
        "--resource-prefix=devices.example.com",
        "--removal-grace=1000000",
        "--log-level=info",
        "--log-format=json",
        "--http-address=0.0.0.0:8080",
        "--dev-dir=/dev",
        "--log-level=debug",
    ]
    assert container["env"] == [{"name": "SDM_REMOVAL_GRACE", "value": "30"}]
    # The host's device directory is still mounted at /dev in the container.
    assert host_path_of(pod_spec, container, "/dev") == "/host/dev"


IDENTITY_CONFIG = [
    {"name": "gps", "subsystem": "tty",
     "attributes": {"idVendor": "0403", "idProduct": "6001", "serial": "A50285BI"},
     "nummaxdevices": 1, "containerpath": "/dev/gps", "env": {"GPS_BAUD": "9600"},
     "mounts": [{"hostpath": "/sys/class/gpio", "containerpath": "/sys/class/gpio"}]},
    {"name": "usb-serial", "pool": True, "subsystem": "tty", "attributes": {"idVendor": "10c4"},
     "nummaxdevices": 1},
    {"devicematch": "nvidia-gpu", "nummaxdevices": 1},
]


def test_config_takes_the_identity_keys_unchanged(chart: helm.Chart) -> None:
    """The issue's example rules go through the chart's schema into conf.yaml, and the daemon
    accepts what the chart wrote."""
    from smarter_device_manager.config import parse_config

    configmap = one(objects(chart, {"config": IDENTITY_CONFIG}), "ConfigMap")
    text = configmap["data"]["conf.yaml"]
    assert yaml.safe_load(text) == IDENTITY_CONFIG
    rules = parse_config(text, "conf.yaml").rules
    assert [r.name for r in rules] == ["gps", "usb-serial", None] and rules[1].pool and rules[2].nvidia


def test_cdi_value_turns_cdi_on_with_the_hosts_cdi_dir(chart: helm.Chart) -> None:
    off = daemon_container(one(objects(chart), "DaemonSet")["spec"]["template"]["spec"])
    assert not any(a.startswith("--cdi") for a in off["args"]) and "/var/run/cdi" not in mounts(off)
    pod_spec = one(objects(chart, {"cdi": {"enabled": True, "hostDir": "/run/cdi"}}),
                   "DaemonSet")["spec"]["template"]["spec"]
    container = daemon_container(pod_spec)
    assert container["args"][-2:] == ["--cdi=on", "--cdi-dir=/var/run/cdi"]
    assert host_path_of(pod_spec, container, "/var/run/cdi") == "/run/cdi"
    assert not mounts(container)["/var/run/cdi"].get("readOnly")
    assert volumes(pod_spec)["cdi"]["hostPath"]["type"] == "DirectoryOrCreate"


def test_image_and_pull_settings(chart: helm.Chart) -> None:
    values = {
        "image": {
            "repository": "registry.example.com/sdm",
            "tag": "2.0.1-rc1",
            "pullPolicy": "Always",
        },
        "imagePullSecrets": [{"name": "regcred"}],
    }
    daemonset = one(objects(chart, values), "DaemonSet")
    spec = daemonset["spec"]["template"]["spec"]
    container = daemon_container(spec)
    assert container["image"] == "registry.example.com/sdm:2.0.1-rc1"
    assert container["imagePullPolicy"] == "Always"
    assert spec["imagePullSecrets"] == [{"name": "regcred"}]
    assert daemonset["metadata"]["labels"]["app.kubernetes.io/version"] == "2.0.1-rc1"


def test_resources_scheduling_and_update_strategy(chart: helm.Chart) -> None:
    values = {
        # Helm merges maps: null removes a default.
        "resources": {
            "requests": {"cpu": "20m", "memory": "48Mi"},
            "limits": {"cpu": None, "memory": "128Mi"},
        },
        "nodeSelector": {"kubernetes.io/arch": "arm64"},
        "tolerations": [{"operator": "Exists"}],
        "priorityClassName": "",
        "updateStrategy": {"type": "OnDelete"},
    }
    daemonset = one(objects(chart, values), "DaemonSet")
    spec = daemonset["spec"]["template"]["spec"]
    assert daemon_container(spec)["resources"] == {
        "requests": {"cpu": "20m", "memory": "48Mi"},
        "limits": {"memory": "128Mi"},
    }
    # Maps merge with the defaults: the label selector stays unless set to null.
    assert spec["nodeSelector"] == {
        "smarter-device-manager": "enabled",
        "kubernetes.io/arch": "arm64",
    }
    assert spec["tolerations"] == [{"operator": "Exists"}]
    assert "priorityClassName" not in spec
    assert daemonset["spec"]["updateStrategy"] == {"type": "OnDelete"}


def test_run_everywhere_without_node_selector_or_scrape_annotations(chart: helm.Chart) -> None:
    values = helm.parse_set_string("nodeSelector=null,metrics.annotations=null")
    template = one(objects(chart, values), "DaemonSet")["spec"]["template"]
    assert "nodeSelector" not in template["spec"]
    assert "annotations" not in template["metadata"]


def test_notes_tell_how_to_label_and_check_the_node(chart: helm.Chart) -> None:
    notes = chart.render(None, name=RELEASE, namespace=NAMESPACE)[
        "smarter-device-manager/templates/NOTES.txt"
    ]
    assert "kubectl label node <node> smarter-device-manager=enabled" in notes
    assert "kubectl describe node <node>" in notes
    assert "smarter-devices/" in notes


# --- the chart: values schema ------------------------------------------------------------------

BAD_VALUES = {
    "negative-count": "config:\n  - devicematch: ^ttyUSB[0-9]*$\n    nummaxdevices: -1\n",
    "count-not-int": 'config:\n  - devicematch: ^ttyUSB[0-9]*$\n    nummaxdevices: "1"\n',
    "count-fraction": "config:\n  - devicematch: ^ttyUSB[0-9]*$\n    nummaxdevices: 1.5\n",
    "count-too-big": "config:\n  - devicematch: ^ttyUSB[0-9]*$\n    nummaxdevices: 1001\n",
    "missing-devicematch": "config:\n  - nummaxdevices: 1\n",
    "empty-devicematch": 'config:\n  - devicematch: ""\n    nummaxdevices: 1\n',
    "typo-in-rule-key": "config:\n  - devicematc: ^video[0-9]*$\n    nummaxdevices: 1\n",
    "config-not-list": "config:\n  devicematch: ^video[0-9]*$\n  nummaxdevices: 1\n",
    "typo-top-level-key": "kubeletPluginDirectory: /var/lib/kubelet/device-plugins\n",
    "relative-plugin-dir": "kubeletPluginDir: var/lib/kubelet/device-plugins\n",
    "port-zero": "http:\n  port: 0\n",
    "bad-log-format": "logFormat: xml\n",
    "bad-log-level": "logLevel: verbose\n",
    "bad-resource-prefix": "resourcePrefix: Smarter/Devices\n",
    "reserved-resource-prefix": "resourcePrefix: devices.kubernetes.io\n",
    "log-level-the-daemon-refuses": "logLevel: critical\n",
    "negative-removal-grace": "removalGrace: -5\n",
    "bad-pull-policy": "image:\n  pullPolicy: Sometimes\n",
    "extra-args-not-strings": "extraArgs:\n  - 1\n",
    "rule-selects-nothing": "config:\n  - name: gps\n    nummaxdevices: 1\n",
    "attribute-not-string": "config:\n  - attributes: {idVendor: 403}\n    nummaxdevices: 1\n",
    "attribute-bad-name": 'config:\n  - attributes: {"a/b": "1"}\n    nummaxdevices: 1\n',
    "pool-not-bool": "config:\n  - {subsystem: tty, name: p, pool: yes-please, nummaxdevices: 1}\n",
    "relative-containerpath": "config:\n  - {subsystem: tty, containerpath: dev/gps, nummaxdevices: 1}\n",
    "env-not-string": "config:\n  - {subsystem: tty, env: {BAUD: 9600}, nummaxdevices: 1}\n",
    "mount-without-hostpath":
        "config:\n  - {subsystem: tty, mounts: [{containerpath: /x}], nummaxdevices: 1}\n",
    "cdi-relative-dir": "cdi:\n  enabled: true\n  hostDir: var/run/cdi\n",
    "cdi-enabled-not-bool": 'cdi:\n  enabled: "yes"\n',
    "cdi-typo": "cdi:\n  enable: true\n",
}


@pytest.mark.parametrize("text", BAD_VALUES.values(), ids=list(BAD_VALUES))
def test_schema_rejects_bad_values_file(chart: helm.Chart, text: str, tmp_path: Path) -> None:
    values_file = tmp_path / "values.yaml"
    values_file.write_text(text, encoding="utf-8")
    values = helm.values_from_yaml(values_file.read_text(encoding="utf-8"))

    report = helm.lint(CHART_DIR, values, namespace=NAMESPACE)
    assert report["errors"], f"lint accepted {text!r}"
    with pytest.raises(helm.HelmValuesError):
        chart.validate_schema(values)
    with pytest.raises(helm.HelmValuesError):  # what `helm install -f` would do
        chart.render(values, name=RELEASE, namespace=NAMESPACE)


def test_schema_accepts_zero_count_and_empty_rule_list(chart: helm.Chart) -> None:
    chart.validate_schema({"config": [{"devicematch": "^vcs$", "nummaxdevices": 0}]})
    chart.validate_schema({"config": []})


# --- Kubernetes API schema validation ----------------------------------------------------------


def test_schema_versions_span_the_supported_range() -> None:
    assert len(K8S_VERSIONS) >= 2
    assert K8S_VERSIONS[0].startswith("1.28.")
    assert K8S_VERSIONS[-1] == kubernetes_validate.latest_version()


def test_validation_is_strict() -> None:
    """A wrong manifest must fail: guards against a validator that accepts anything."""
    daemonset = one(load_documents(DEPLOY_DIR / "smarter-device-manager.yaml"), "DaemonSet")
    unknown_field = copy.deepcopy(daemonset)
    daemon_container(unknown_field["spec"]["template"]["spec"])["readOnly"] = True
    wrong_type = copy.deepcopy(daemonset)
    wrong_type["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = "ten"
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(daemonset, version, strict=True)
        for broken in (unknown_field, wrong_type):
            with pytest.raises(kubernetes_validate.ValidationError):
                kubernetes_validate.validate(broken, version, strict=True)


RENDER_CASES: list[Obj] = [
    *LINT_CASES,
    {
        "hostDev": "/host/dev",
        "extraEnv": [{"name": "SDM_LOG_LEVEL", "value": "debug"}],
        "imagePullSecrets": [{"name": "regcred"}],
        "podAnnotations": {"a.example.com/b": "c"},
        "affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {
                            "matchExpressions": [
                                {"key": "kubernetes.io/os", "operator": "In", "values": ["linux"]}
                            ]
                        }
                    ]
                }
            }
        },
    },
    {
        "resources": {"requests": {"cpu": "20m", "memory": "48Mi"}},
        "updateStrategy": {"type": "OnDelete"},
        "probes": {"liveness": {"enabled": False}},
    },
]


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("values", RENDER_CASES, ids=lambda v: ",".join(v) or "defaults")
def test_rendered_chart_is_valid_kubernetes(chart: helm.Chart, values: Obj, version: str) -> None:
    objs = objects(chart, values)
    assert {obj["kind"] for obj in objs} == {"DaemonSet", "ConfigMap", "NetworkPolicy"}
    for obj in objs:
        validate_strict(obj, version)


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("path", deploy_files(), ids=lambda p: p.name)
def test_deploy_manifest_is_valid_kubernetes(path: Path, version: str) -> None:
    docs = load_documents(path)
    assert docs, f"{path.name} holds no object"
    for obj in docs:
        validate_strict(obj, version)


# --- the plain manifests in deploy/ ------------------------------------------------------------


def test_deploy_has_the_expected_files() -> None:
    assert {p.name for p in deploy_files()} == {
        "smarter-device-manager.yaml",
        "smarter-device-manager-k3s.yaml",
        "smarter-device-manager-configmap.yaml",
        "smarter-device-manager-pod.yaml",
        "smarter-device-manager-pod-k3s.yaml",
        "example-client-pod.yaml",
    }


@pytest.mark.parametrize(
    ("name", "plugin_dir"),
    [
        ("smarter-device-manager.yaml", CONTAINER_PLUGIN_DIR),
        ("smarter-device-manager-k3s.yaml", K3S_PLUGIN_DIR),
    ],
)
def test_daemonset_manifest(name: str, plugin_dir: str) -> None:
    docs = load_documents(DEPLOY_DIR / name)
    assert [d["kind"] for d in docs] == ["Namespace", "NetworkPolicy", "ConfigMap", "DaemonSet"]
    namespace, policy, configmap, daemonset = docs
    assert_network_policy(policy, daemonset["spec"]["template"]["metadata"]["labels"])
    assert namespace["metadata"]["name"] == MANIFEST_NAMESPACE
    for obj in (configmap, daemonset):
        assert obj["metadata"]["namespace"] == MANIFEST_NAMESPACE
    template = daemonset["spec"]["template"]
    spec = template["spec"]
    assert_daemon_pod_spec(spec, plugin_dir)
    assert_http_on(spec)
    assert daemon_container(spec)["image"] == f"{IMAGE_REPOSITORY}:{APP_VERSION}"
    assert spec["nodeSelector"] == {"smarter-device-manager": "enabled"}
    assert template["metadata"]["annotations"] == PROMETHEUS_ANNOTATIONS
    assert (
        daemonset["spec"]["selector"]["matchLabels"].items()
        <= template["metadata"]["labels"].items()
    )
    assert volumes(spec)["config"]["configMap"]["name"] == configmap["metadata"]["name"]


def test_k3s_daemonset_differs_only_in_plugin_dir() -> None:
    standard = one(load_documents(DEPLOY_DIR / "smarter-device-manager.yaml"), "DaemonSet")
    k3s = one(load_documents(DEPLOY_DIR / "smarter-device-manager-k3s.yaml"), "DaemonSet")
    volumes(k3s["spec"]["template"]["spec"])["device-plugins"]["hostPath"]["path"] = (
        CONTAINER_PLUGIN_DIR
    )
    assert k3s == standard


@pytest.mark.parametrize(
    ("name", "daemonset_name"),
    [
        ("smarter-device-manager-pod.yaml", "smarter-device-manager.yaml"),
        ("smarter-device-manager-pod-k3s.yaml", "smarter-device-manager-k3s.yaml"),
    ],
)
def test_single_pod_manifest_matches_daemonset(name: str, daemonset_name: str) -> None:
    docs = load_documents(DEPLOY_DIR / name)
    assert [d["kind"] for d in docs] == ["Namespace", "NetworkPolicy", "Pod"]
    pod = docs[2]
    assert_network_policy(docs[1], pod["metadata"]["labels"])
    assert pod["metadata"]["namespace"] == MANIFEST_NAMESPACE
    assert pod["spec"]["nodeName"] == "my-node"
    # Same pod as the DaemonSet's, pinned by nodeName instead of selected by label.
    daemonset = one(load_documents(DEPLOY_DIR / daemonset_name), "DaemonSet")
    expected = copy.deepcopy(daemonset["spec"]["template"]["spec"])
    del expected["nodeSelector"]
    actual = copy.deepcopy(pod["spec"])
    del actual["nodeName"]
    assert actual == expected
    # Without the ConfigMap the daemon falls back to its embedded rules.
    assert volumes(pod["spec"])["config"]["configMap"]["optional"] is True


def test_example_client_pod_requests_a_serial_device() -> None:
    (pod,) = load_documents(DEPLOY_DIR / "example-client-pod.yaml")
    assert pod["kind"] == "Pod"
    (container,) = pod["spec"]["containers"]
    assert container["resources"]["limits"]["smarter-devices/ttyUSB0"] == 1
    assert "busybox" in container["image"]
    assert "ls -l /dev/ttyUSB0" in " ".join(container["command"])
    # No privilege, capability or root needed to use the device: the device group is enough.
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert pod["spec"]["securityContext"]["runAsUser"] != 0
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert container["securityContext"]["allowPrivilegeEscalation"] is False


# --- one default config everywhere -------------------------------------------------------------


def embedded_rules() -> list[Obj]:
    assert EMBEDDED_CONFIG.is_file(), f"{EMBEDDED_CONFIG} is missing"
    rules: list[Obj] = yaml.safe_load(EMBEDDED_CONFIG.read_text(encoding="utf-8"))
    assert rules and all(set(rule) == {"devicematch", "nummaxdevices"} for rule in rules)
    return rules


def test_chart_default_config_is_the_embedded_default(chart: helm.Chart) -> None:
    assert chart.values["config"] == embedded_rules()


@pytest.mark.parametrize(
    "name",
    [
        "smarter-device-manager.yaml",
        "smarter-device-manager-k3s.yaml",
        "smarter-device-manager-configmap.yaml",
    ],
)
def test_deploy_configmap_is_the_embedded_default(name: str) -> None:
    configmap = one(load_documents(DEPLOY_DIR / name), "ConfigMap")
    assert configmap["metadata"]["name"] == "smarter-device-manager"
    assert configmap["metadata"]["namespace"] == MANIFEST_NAMESPACE
    assert set(configmap["data"]) == {"conf.yaml"}
    assert yaml.safe_load(configmap["data"]["conf.yaml"]) == embedded_rules()


# --- static security checks (checkov) ----------------------------------------------------------

CHECKOV = ROOT / ".venv-tools" / "bin" / "checkov"
# Every check skipped for the whole scan, with the reason; docs/deployment.md lists the same.
CHECKOV_SKIPS = {
    "CKV_K8S_23": "root: the daemon creates sockets in the root-owned kubelet plugin dir and "
                  "connects to the root-owned kubelet.sock; it runs as uid 0 with no capability",
    "CKV_K8S_40": "high UID: same reason as CKV_K8S_23",
    "CKV_K8S_15": "imagePullPolicy Always: release tags are immutable, and an edge node that "
                  "reboots without its uplink must still start its device plugin",
    "CKV_K8S_43": "image digest: the chart takes image.digest (from the release notes); the "
                  "plain manifests name the release tag, whose digest is not known before release",
    "CKV_DOCKER_2": "HEALTHCHECK: Kubernetes probes /healthz and /readyz; the image has none",
    "CKV_DOCKER_3": "USER: root is needed, see CKV_K8S_23; capabilities are dropped by the pod",
}


def checkov_scan(tmp_path: Path, chart: helm.Chart) -> Obj:
    if not CHECKOV.exists():
        (pytest.fail if os.environ.get("CI") == "true" else pytest.skip)(
            "checkov not installed: scripts/lint-tools.sh installs it in .venv-tools")
    (tmp_path / "chart").mkdir()
    variants: list[Obj] = [{}, {"kubeletPluginDir": K3S_PLUGIN_DIR,
                                "image": {"digest": "sha256:" + "0" * 64}}]
    for values in variants:
        for path, text in chart.render(values, name=RELEASE, namespace=NAMESPACE).items():
            if path.endswith(".yaml"):
                name = path.replace("/", "_").replace(".yaml", f"-{len(values)}.yaml")
                (tmp_path / "chart" / name).write_text(text)
    shutil.copytree(DEPLOY_DIR, tmp_path / "deploy")
    shutil.copy(ROOT / "Dockerfile", tmp_path / "Dockerfile")
    proc = subprocess.run(
        [str(CHECKOV), "--directory", str(tmp_path), "--framework", "kubernetes", "dockerfile",
         "--skip-download", "--output", "json", "--compact",
         "--skip-check", ",".join(CHECKOV_SKIPS)],
        capture_output=True, text=True, timeout=240, check=False,
        env={**os.environ, "BC_SKIP_MAPPING": "TRUE", "CHECKOV_NO_UPDATE_CHECK": "1"})
    assert proc.returncode in (0, 1), proc.stderr[-2000:]
    reports = json.loads(proc.stdout)
    return {r["check_type"]: r for r in (reports if isinstance(reports, list) else [reports])}


def test_checkov_finds_nothing_outside_the_documented_skips(tmp_path: Path,
                                                            chart: helm.Chart) -> None:
    reports = checkov_scan(tmp_path, chart)
    assert set(reports) == {"kubernetes", "dockerfile"}
    failed = [f"{c['check_id']} {c['resource']} ({c['file_path']})"
              for r in reports.values() for c in r["results"]["failed_checks"]]
    assert failed == [], "checkov:\n" + "\n".join(failed)
    passed = {c["check_id"] for r in reports.values() for c in r["results"]["passed_checks"]}
    # It did check what matters here (not an empty scan).
    assert {"CKV_K8S_16", "CKV_K8S_20", "CKV_K8S_22", "CKV_K8S_28", "CKV_K8S_37",
            "CKV2_K8S_6"} <= passed
    scanned = {c["file_path"].split("/")[1] for r in reports.values()
               for c in r["results"]["passed_checks"]}
    assert scanned >= {"chart", "deploy", "Dockerfile"}
    # The example pods' own suppressions (annotations) and the DRA DaemonSet's API token are
    # the only skipped results.
    skipped = {c["check_id"] for r in reports.values() for c in r["results"]["skipped_checks"]}
    assert skipped == {"CKV_K8S_21", "CKV_K8S_8", "CKV_K8S_9", "CKV_K8S_38"}


def test_checkov_skips_are_documented() -> None:
    doc = (ROOT / "docs" / "deployment.md").read_text(encoding="utf-8")
    pod = (DEPLOY_DIR / "example-client-pod.yaml").read_text(encoding="utf-8")
    pod += (DEPLOY_DIR / "dra" / "smarter-device-manager-dra.yaml").read_text(encoding="utf-8")
    example_skips = re.findall(r"checkov\.io/skip\d+: (CKV\w+)=", pod)
    assert example_skips
    for check in [*CHECKOV_SKIPS, *example_skips]:
        assert re.search(rf"`{check}`", doc), f"{check} is skipped but not in docs/deployment.md"
