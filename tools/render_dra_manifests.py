"""Write deploy/dra/smarter-device-manager-dra.yaml: the chart's DRA mode as plain manifests.

The manifests are the chart rendered with ``dra.enabled=true`` (namespace
smarter-device-management, names smarter-device-manager*), without the device-plugin DaemonSet and
without Helm's bookkeeping labels, so the two packagings cannot drift: tests/test_deploy_dra.py
renders again and compares. Run with the test extra installed (helm-python-sdk):
``.venv/bin/python tools/render_dra_manifests.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "smarter-device-manager"
OUT = ROOT / "deploy" / "dra" / "smarter-device-manager-dra.yaml"
NAMESPACE = "smarter-device-management"
VALUES: dict[str, Any] = {"fullnameOverride": "smarter-device-manager", "dra": {"enabled": True}}
HEADER = """\
# smarter-device-manager in DRA mode (Kubernetes >= 1.34, resource.k8s.io/v1): one daemon on every
# node labelled smarter-device-manager=enabled, publishing the devices its rules select as
# ResourceSlices of the driver smarter-devices.io; and the dra-classes controller (one replica),
# which keeps a DeviceClass per extended resource name so pods asking for smarter-devices/<name>
# in resources.limits run unchanged. See docs/dra.md.
#
#   kubectl apply -f deploy/dra/smarter-device-manager-dra.yaml
#   kubectl label node <node> smarter-device-manager=enabled
#   kubectl get resourceslices -o wide
#
# Generated from the Helm chart (dra.enabled=true) by tools/render_dra_manifests.py; do not edit.
"""
_HELM_LABELS = ("helm.sh/chart", "app.kubernetes.io/managed-by", "app.kubernetes.io/version")


def render() -> str:
    import helm_python as helm

    with helm.Chart.load(str(CHART)) as chart:
        rendered = chart.render(VALUES, name="smarter-device-manager", namespace=NAMESPACE)
    docs: list[dict[str, Any]] = [{
        "apiVersion": "v1", "kind": "Namespace", "metadata": {
            "name": NAMESPACE, "labels": {"pod-security.kubernetes.io/enforce": "privileged"}}}]
    for path in sorted(rendered):
        name = path.rsplit("/", 1)[-1]
        if name.endswith(".txt") or name == "daemonset.yaml":
            continue
        for doc in yaml.safe_load_all(rendered[path]):
            if doc:
                labels = doc["metadata"].get("labels") or {}
                for key in _HELM_LABELS:
                    labels.pop(key, None)
                docs.append(doc)
    return HEADER + "".join("---\n" + yaml.safe_dump(doc, sort_keys=False) for doc in docs)


def main() -> int:
    OUT.write_text(render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
