"""DRA mode's deployment: the chart's dra-* templates, deploy/dra/ and its examples.

Rendered and linted by Helm's engine, validated strictly against the Kubernetes API schemas
(kubernetes-validate) of the versions that serve resource.k8s.io/v1 (1.34 and later), and
checked for what DRA mode needs: its option set, the node name from the downward API, the
kubelet's plugins and plugins_registry directories and the CDI directory at the same paths
inside as on the host, the least RBAC, the DeviceClass and the own-node admission policy.
"""

from __future__ import annotations

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
DRA_DIR = ROOT / "deploy" / "dra"
sys_path = str(ROOT / "tools")

Obj = dict[str, Any]
DRA_OPTIONS = {"--driver-name", "--host-dev-dir", "--resource-prefix", "--kubelet-plugins-dir",
               "--kubelet-registry-dir", "--cdi-dir", "--log-level", "--log-format", "--http-address",
               "--config", "--dev-dir", "--sys-dir", "--state-dir", "--node-name", "--kubeconfig",
               "--removal-grace", "--unplugged-taint-effect"}
VERSIONS = [v for v in all_versions() if tuple(int(p) for p in v.split(".")) >= (1, 34)]


@pytest.fixture(scope="module")
def chart() -> Iterator[helm.Chart]:
    with helm.Chart.load(str(CHART_DIR)) as loaded:
        yield loaded


def objects(chart: helm.Chart, values: Obj) -> list[Obj]:
    out = []
    for path, text in chart.render(values, name="sdm", namespace="devices").items():
        if not path.endswith(".txt"):
            out += [doc for doc in yaml.safe_load_all(text) if doc]
    return out


def by_kind(objs: list[Obj]) -> dict[str, list[Obj]]:
    found: dict[str, list[Obj]] = {}
    for obj in objs:
        found.setdefault(obj["kind"], []).append(obj)
    return found


def validate(obj: Obj) -> None:
    assert VERSIONS, "kubernetes-validate has no schema of a version with resource.k8s.io/v1"
    for version in (VERSIONS[0], VERSIONS[-1]):
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = ".".join(str(p) for p in exc.path) or "(top)"
            pytest.fail(f"{obj['kind']}/{obj['metadata'].get('name')} invalid for {version}: {where}: "
                        f"{exc.message}", pytrace=False)


def test_dra_is_off_by_default(chart: helm.Chart) -> None:
    kinds = by_kind(objects(chart, {}))
    assert not {"DeviceClass", "ServiceAccount", "ClusterRole", "ValidatingAdmissionPolicy"} & set(kinds)
    assert len(kinds["DaemonSet"]) == 1


def test_dra_objects(chart: helm.Chart) -> None:
    objs = objects(chart, {"dra": {"enabled": True}})
    kinds = by_kind(objs)
    for obj in objs:
        validate(obj)
    daemonset = next(d for d in kinds["DaemonSet"] if d["metadata"]["name"].endswith("-dra"))
    spec = daemonset["spec"]["template"]["spec"]
    container = spec["containers"][0]
    assert container["args"][0] == "dra"
    assert {a.split("=", 1)[0] for a in container["args"][1:]} <= DRA_OPTIONS
    assert "--driver-name=smarter-devices.io" in container["args"]
    assert {"--removal-grace=300", "--unplugged-taint-effect=NoSchedule"} <= set(container["args"])
    env = {e["name"]: e for e in container["env"]}
    assert env["SDM_NODE_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    # rolling updates without downtime: the new pod beside the old one, sockets named by pod UID
    assert env["SDM_POD_UID"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.uid"}}
    assert daemonset["spec"]["updateStrategy"] == {
        "type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    assert spec["automountServiceAccountToken"] is True
    assert spec["serviceAccountName"] == "sdm-smarter-device-manager-dra"
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    for path in ("/var/lib/kubelet/plugins", "/var/lib/kubelet/plugins_registry", "/var/run/cdi"):
        assert volumes[mounts[path]["name"]]["hostPath"]["path"] == path, "same path inside as outside"
        assert not mounts[path].get("readOnly")
    assert mounts["/dev"]["readOnly"] and mounts["/sys"]["readOnly"]
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert container["securityContext"]["privileged"] is False
    # DRA mode replaces the device-plugin DaemonSet: both would hand out the same devices.
    assert [d["metadata"]["name"] for d in kinds["DaemonSet"]] == [daemonset["metadata"]["name"]]
    policy = next(p for p in kinds["NetworkPolicy"] if p["metadata"]["name"].endswith("-dra"))
    assert policy["spec"]["podSelector"]["matchLabels"] == daemonset["spec"]["selector"]["matchLabels"]
    assert {p["port"] for rule in policy["spec"]["egress"] for p in rule["ports"]} == {443, 6443}

    named = {(o["kind"], o["metadata"]["name"]): o for o in objs}  # dra-classes.yaml has its own
    role = named["ClusterRole", "sdm-smarter-device-manager-dra"]
    rules = {tuple(r["resources"]): set(r["verbs"]) for r in role["rules"]}
    assert rules == {("resourceslices",): {"get", "list", "watch", "create", "update", "delete"},
                     ("resourceclaims",): {"get"}, ("nodes",): {"get"}}
    assert next(r for r in role["rules"] if r["resources"] == ["nodes"])["apiGroups"] == [""]
    binding = named["ClusterRoleBinding", "sdm-smarter-device-manager-dra"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "sdm-smarter-device-manager-dra",
                                    "namespace": "devices"}]
    device_class = kinds["DeviceClass"][0]
    assert device_class["metadata"]["name"] == "smarter-devices.io"
    assert device_class["spec"]["selectors"] == [
        {"cel": {"expression": 'device.driver == "smarter-devices.io"'}}]
    policy = named["ValidatingAdmissionPolicy", "sdm-smarter-device-manager-dra-own-node"]
    assert "system:serviceaccount:devices:sdm-smarter-device-manager-dra" in \
        policy["spec"]["matchConditions"][0]["expression"]
    assert named["ValidatingAdmissionPolicyBinding", "sdm-smarter-device-manager-dra-own-node"]["spec"][
        "policyName"] == policy["metadata"]["name"]


@pytest.mark.parametrize("driver", ["smarter-devices.io", "devices.example.com"])
def test_admission_policy_pins_node_and_driver(chart: helm.Chart, driver: str) -> None:
    """The policy holds the daemon to its own node's slices AND its own driver's: without the
    driver pin, a compromised daemon could create or delete other drivers' slices on its node."""
    kinds = by_kind(objects(chart, {"dra": {"enabled": True, "driverName": driver}}))
    spec = kinds["ValidatingAdmissionPolicy"][0]["spec"]
    assert set(spec["matchConstraints"]["resourceRules"][0]["operations"]) == {"CREATE", "UPDATE", "DELETE"}
    variables = {v["name"]: " ".join(v["expression"].split()) for v in spec["variables"]}
    # on DELETE the request has no object: the slice being deleted is oldObject
    assert variables["sliceDriver"] == ('request.operation == "DELETE" ? oldObject.spec.?driver.orValue("") '
                                        ': object.spec.?driver.orValue("")')
    expressions = {" ".join(v["expression"].split()) for v in spec["validations"]}
    assert f'variables.sliceDriver == "{driver}"' in expressions
    assert "variables.sliceNode == variables.userNode" in expressions


def test_dra_values(chart: helm.Chart) -> None:
    objs = objects(chart, {"dra": {
        "enabled": True, "driverName": "devices.example.com", "deviceClass": False,
        "restrictToOwnNode": False, "extendedResources": {"enabled": False},
        "apiServer": {"host": "10.0.0.5", "port": 6443},
        "kubeletPluginsDir": "/var/lib/rancher/k3s/agent/kubelet/plugins"}})
    kinds = by_kind(objs)
    assert "DeviceClass" not in kinds and "ValidatingAdmissionPolicy" not in kinds
    daemonset = next(d for d in kinds["DaemonSet"] if d["metadata"]["name"].endswith("-dra"))
    container = daemonset["spec"]["template"]["spec"]["containers"][0]
    assert "--driver-name=devices.example.com" in container["args"]
    assert "--kubelet-plugins-dir=/var/lib/rancher/k3s/agent/kubelet/plugins" in container["args"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["KUBERNETES_SERVICE_HOST"] == "10.0.0.5" and env["KUBERNETES_SERVICE_PORT"] == "6443"


@pytest.mark.parametrize("values", [
    {"dra": {"enabled": True, "driverName": "NoDots"}},
    {"dra": {"enabled": True, "driverName": "x" * 61 + ".io"}},
    {"dra": {"enabled": True, "cdiDir": "relative"}},
    {"dra": {"enabled": True, "typo": 1}},
    {"dra": {"enabled": "yes"}},
])
def test_bad_dra_values_are_refused(values: Obj) -> None:
    report = helm.lint(str(CHART_DIR), values, strict=True, namespace="devices")
    assert report["errors"], values


def test_lint_with_dra() -> None:
    report = helm.lint(str(CHART_DIR), {"dra": {"enabled": True}}, strict=True, namespace="devices")
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


def test_plain_manifests_are_the_rendered_chart() -> None:
    import sys

    sys.path.insert(0, sys_path)
    import render_dra_manifests

    assert (DRA_DIR / "smarter-device-manager-dra.yaml").read_text() == render_dra_manifests.render(), \
        "deploy/dra is stale: run tools/render_dra_manifests.py"


@pytest.mark.parametrize("path", sorted(DRA_DIR.glob("**/*.yaml")), ids=lambda p: p.name)
def test_manifests_and_examples_are_valid(path: Path) -> None:
    docs = [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    assert docs
    for doc in docs:
        validate(doc)
