"""The chart's dra-classes controller (templates/dra-classes.yaml): one replica, its own
ServiceAccount with the least RBAC, the admission policy that keeps it to its own classes (tied to
the labels the code writes), its values and their bad values."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import helm_python as helm
import pytest
from test_deploy_dra import CHART_DIR, objects, validate

from smarter_device_manager.dra.classes import DRIVER_LABEL, MANAGED_BY, MANAGED_BY_LABEL

Obj = dict[str, Any]
NAME = "sdm-smarter-device-manager-dra-classes"


@pytest.fixture(scope="module")
def chart() -> Iterator[helm.Chart]:
    with helm.Chart.load(str(CHART_DIR)) as loaded:
        yield loaded


def named(objs: list[Obj]) -> dict[tuple[str, str], Obj]:
    return {(o["kind"], o["metadata"]["name"]): o for o in objs}


def test_controller_objects(chart: helm.Chart) -> None:
    objs = named(objects(chart, {"dra": {"enabled": True}}))
    for obj in objs.values():
        validate(obj)
    deployment = objs["Deployment", NAME]
    assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"] == {"type": "Recreate"}
    spec = deployment["spec"]["template"]["spec"]
    assert spec["serviceAccountName"] == NAME and spec["automountServiceAccountToken"] is True
    assert spec["securityContext"]["runAsNonRoot"] is True and "volumes" not in spec  # no host access
    container = spec["containers"][0]
    assert container["args"] == ["dra-classes", "--driver-name=smarter-devices.io",
                                 "--resource-prefix=smarter-devices", "--grace=300", "--log-level=info",
                                 "--log-format=text", "--http-address=0.0.0.0:8080"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    # least RBAC: read slices, write classes; nothing namespaced, no claims, no nodes
    rules = {tuple(r["resources"]): set(r["verbs"]) for r in objs["ClusterRole", NAME]["rules"]}
    assert rules == {("resourceslices",): {"get", "list", "watch"},
                     ("deviceclasses",): {"get", "list", "watch", "create", "update", "delete"}}
    assert objs["ClusterRoleBinding", NAME]["subjects"] == [
        {"kind": "ServiceAccount", "name": NAME, "namespace": "devices"}]
    # the node daemon's rights are unchanged: no DeviceClass write for it
    daemon_rules = objs["ClusterRole", "sdm-smarter-device-manager-dra"]["rules"]
    assert all("deviceclasses" not in r["resources"] for r in daemon_rules)
    # the policy binds the controller to classes with the labels the code writes
    policy = objs["ValidatingAdmissionPolicy", NAME]
    assert policy["spec"]["matchConstraints"]["resourceRules"][0]["resources"] == ["deviceclasses"]
    assert f'"system:serviceaccount:devices:{NAME}"' in policy["spec"]["matchConditions"][0]["expression"]
    cel = " ".join(v["expression"] for v in policy["spec"]["variables"])
    for needle in (f'"{MANAGED_BY_LABEL}"', f'"{MANAGED_BY}"', f'"{DRIVER_LABEL}"', '"smarter-devices.io"',
                   'startsWith("smarter-devices.io-")', 'startsWith("smarter-devices/")'):
        assert needle in cel, needle
    assert objs["ValidatingAdmissionPolicyBinding", NAME]["spec"]["policyName"] == NAME
    network = objs["NetworkPolicy", NAME]
    assert network["spec"]["podSelector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]


def test_controller_values(chart: helm.Chart) -> None:
    objs = named(objects(chart, {"resourcePrefix": "devices.example.com", "http": {"enabled": False},
                                 "dra": {"enabled": True, "driverName": "dev.example.com",
                                         "apiServer": {"host": "10.0.0.5"},
                                         "extendedResources": {"grace": 60, "restrictClasses": False,
                                                               "nodeSelector": {"role": "control"}}}}))
    deployment = objs["Deployment", "sdm-smarter-device-manager-dra-classes"]
    spec = deployment["spec"]["template"]["spec"]
    container = spec["containers"][0]
    assert {"--driver-name=dev.example.com", "--resource-prefix=devices.example.com", "--grace=60"} <= \
        set(container["args"])
    assert not any(a.startswith("--http-address") for a in container["args"])
    assert "readinessProbe" not in container
    assert {e["name"]: e["value"] for e in container["env"]} == {"KUBERNETES_SERVICE_HOST": "10.0.0.5",
                                                                  "KUBERNETES_SERVICE_PORT": "6443"}
    assert spec["nodeSelector"] == {"role": "control"}
    assert ("ValidatingAdmissionPolicy", NAME) not in objs
    off = named(objects(chart, {"dra": {"enabled": True, "extendedResources": {"enabled": False}}}))
    assert not [k for k in off if k[1] == NAME]
    assert not [k for k in named(objects(chart, {})) if k[1] == NAME]  # device-plugin mode: none


@pytest.mark.parametrize("values", [
    {"dra": {"enabled": True, "extendedResources": {"grace": -1}}},
    {"dra": {"enabled": True, "extendedResources": {"grace": "5m"}}},
    {"dra": {"enabled": True, "extendedResources": {"grace": 700000}}},
    {"dra": {"enabled": True, "extendedResources": {"enabled": "yes"}}},
    {"dra": {"enabled": True, "extendedResources": {"typo": 1}}},
])
def test_bad_controller_values_are_refused(values: Obj) -> None:
    report = helm.lint(str(CHART_DIR), values, strict=True, namespace="devices")
    assert report["errors"], values


def test_lint_with_the_controller() -> None:
    report = helm.lint(str(CHART_DIR), {"dra": {"enabled": True}}, strict=True, namespace="devices")
    assert report["errors"] == []
