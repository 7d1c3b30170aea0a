#!/usr/bin/env python3
"""``helm install`` / ``helm uninstall`` through Helm's own Go engine (helm-python-sdk), for
machines that have no helm binary. scripts/cluster-smoke.sh uses it when ``helm`` is not on PATH.

    helm-sdk.py install RELEASE CHART --namespace NS [--values FILE.json] [--kubeconfig PATH]
                        [--timeout SECONDS]
    helm-sdk.py uninstall RELEASE --namespace NS [--kubeconfig PATH]

A real Helm release (stored as a Secret in NS, visible to ``helm list``), not a rendering piped
to kubectl. CHART: a chart directory or a packaged .tgz.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    install = sub.add_parser("install")
    install.add_argument("release")
    install.add_argument("chart")
    install.add_argument("--values", type=Path)
    install.add_argument("--timeout", type=int, default=300)
    uninstall = sub.add_parser("uninstall")
    uninstall.add_argument("release")
    for p in (install, uninstall):
        p.add_argument("--namespace", required=True)
        p.add_argument("--kubeconfig")
    args = parser.parse_args()

    import helm_python as helm

    config = helm.Config(kubeconfig_path=args.kubeconfig, namespace=args.namespace)
    try:
        if args.command == "install":
            values = json.loads(args.values.read_text()) if args.values else None
            release = config.install(str(Path(args.chart).resolve()), args.release, values,
                                     namespace=args.namespace, timeout=args.timeout)
            print(f"NAME: {release.get('name')}\nNAMESPACE: {release.get('namespace')}\n"
                  f"STATUS: {release.get('status')}\nREVISION: {release.get('revision')}\n"
                  f"CHART: {release.get('chart_name')}-{release.get('chart_version')} "
                  f"(app {release.get('app_version')})")
        else:
            config.uninstall(args.release, timeout=120, ignore_not_found=True)
            print(f'release "{args.release}" uninstalled')
    finally:
        config.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
