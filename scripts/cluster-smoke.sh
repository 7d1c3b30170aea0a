#!/usr/bin/env bash
# cluster-smoke.sh: try smarter-device-manager on your own cluster, end to end, and clean up.
#
#   scripts/cluster-smoke.sh --node NODE --device /dev/net/tun \
#       [--image ghcr.io/smarter-project/smarter-device-manager:2.1.0] [--kubeconfig PATH]
#       [--pull-policy IfNotPresent|Always|Never] [--chart DIR|TGZ|REPO/CHART]
#       [--client-image busybox:1.36] [--namespace NAME] [--timeout SECONDS] [--keep]
#
# What it does, in a namespace of its own (default sdm-smoke-<random>, labelled for the
# privileged Pod Security level that hostPath volumes need):
#   1. checks the node exists and runs no other smarter-device-manager (two would fight over the
#      same sockets), and that the device is a character or block device on that node;
#   2. installs the chart (helm if it is on PATH, otherwise the same Helm engine through
#      helm-python-sdk: scripts/helm-sdk.py) with one rule, for that device only;
#   3. labels the node smarter-device-manager=enabled (unless it already is);
#   4. waits for the daemon's pod to be Ready and the node to show smarter-devices/<name>;
#   5. runs a client pod on the node that requests the resource and opens the device
#      (read-write), no privilege, no capability;
#   6. reads the daemon's /metrics through the API server's pod proxy and checks the
#      allocation was counted;
#   7. cleans up everything it created, and only that: the client pod, the release, the namespace
#      and the node label (if it added it). It restarts nothing.
# Prints PASS/FAIL per step and `CLUSTER-SMOKE: PASS` (exit 0) or `CLUSTER-SMOKE: FAIL` (exit 1).
set -uo pipefail

NODE='' DEVICE='' KUBECONFIG_ARG='' PULL=IfNotPresent CLIENT_IMAGE=busybox:1.36 KEEP=0 TIMEOUT=180
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
CHART=$ROOT/charts/smarter-device-manager
APP_VERSION=$(sed -n 's/^appVersion: "\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' "$CHART/Chart.yaml")
IMAGE=ghcr.io/smarter-project/smarter-device-manager:$APP_VERSION
NS=sdm-smoke-$(head -c 3 /dev/urandom | od -An -tx1 | tr -d ' \n')
RELEASE=smoke

usage() { sed -n '2,8p' "$0" >&2; exit 2; }
while [ $# -gt 0 ]; do
    case "$1" in
        --node) NODE=$2; shift 2 ;;
        --device) DEVICE=$2; shift 2 ;;
        --image) IMAGE=$2; shift 2 ;;
        --kubeconfig) KUBECONFIG_ARG=$2; shift 2 ;;
        --pull-policy) PULL=$2; shift 2 ;;
        --chart) CHART=$2; shift 2 ;;
        --client-image) CLIENT_IMAGE=$2; shift 2 ;;
        --namespace) NS=$2; shift 2 ;;
        --timeout) TIMEOUT=$2; shift 2 ;;
        --keep) KEEP=1; shift ;;
        -h|--help) usage ;;
        *) echo "unknown option $1" >&2; usage ;;
    esac
done
[ -n "$NODE" ] && [ -n "$DEVICE" ] || usage
case "$DEVICE" in /dev/?*) ;; *) echo "--device must be a path under /dev" >&2; exit 2 ;; esac
[ -n "$KUBECONFIG_ARG" ] && export KUBECONFIG=$KUBECONFIG_ARG

FAILED=0 LABELLED=0 INSTALLED=0 NS_CREATED=0
T0=$(date +%s)
say() { printf '[%4ss] %s\n' "$(( $(date +%s) - T0 ))" "$*"; }
pass() { say "PASS $*"; }
fail() { say "FAIL $*"; FAILED=1; }
k() { kubectl "$@"; }

# The resource name, as the daemon makes it: the path relative to /dev, every character outside
# [A-Za-z0-9_-] replaced by _; the rule matches exactly that path.
REL=${DEVICE#/dev/}
NAME=$(printf '%s' "$REL" | sed 's/[^A-Za-z0-9_-]/_/g')
RESOURCE=smarter-devices/$NAME
RULE=$(printf '%s' "$REL" | sed 's/[.[\*^$()+?{}|\\]/\\&/g')
REPO=${IMAGE%:*} TAG=${IMAGE##*:}
[ "$REPO" != "$IMAGE" ] && [ "${TAG#*/}" = "$TAG" ] || { REPO=$IMAGE TAG=$APP_VERSION; }

cleanup() {
    [ "$KEEP" = 1 ] && { say "--keep: left namespace $NS, release $RELEASE and the label"; return; }
    say "cleaning up"
    k -n "$NS" delete pod smoke-client --ignore-not-found --wait=true --timeout=60s >/dev/null 2>&1
    if [ "$INSTALLED" = 1 ]; then
        if command -v helm >/dev/null; then
            helm uninstall "$RELEASE" -n "$NS" --wait --timeout 120s
        else
            "$PY" "$HERE/helm-sdk.py" uninstall "$RELEASE" --namespace "$NS" ${KUBECONFIG:+--kubeconfig "$KUBECONFIG"}
        fi
    fi
    if [ "$LABELLED" = 1 ]; then k label node "$NODE" smarter-device-manager- >/dev/null && say "label removed from $NODE"; fi
    if [ "$NS_CREATED" = 1 ]; then k delete namespace "$NS" --wait=true --timeout=120s >/dev/null && say "namespace $NS deleted"; fi
}
finish() {
    trap - EXIT INT TERM
    cleanup
    if [ "$FAILED" = 0 ]; then say "CLUSTER-SMOKE: PASS"; exit 0; fi
    say "CLUSTER-SMOKE: FAIL"; exit 1
}
trap 'FAILED=1; finish' INT TERM
die() { fail "$*"; finish; }

# --- 0. tools ------------------------------------------------------------------------------------
command -v kubectl >/dev/null || { echo "kubectl not found" >&2; exit 2; }
PY=${PYTHON:-}
if command -v helm >/dev/null; then
    HELM="helm $(helm version --short 2>/dev/null)"
else
    [ -z "$PY" ] && [ -x "$ROOT/.venv/bin/python" ] && PY=$ROOT/.venv/bin/python
    PY=${PY:-python3}
    "$PY" -c 'import helm_python' 2>/dev/null \
        || { echo "neither helm nor helm-python-sdk (pip install helm-python-sdk==0.2.2)" >&2; exit 2; }
    HELM="helm-python-sdk $("$PY" -c 'import helm_python as h; print(h.helm_sdk_version())')"
fi
say "cluster: $(k version -o json 2>/dev/null | sed -n 's/.*"gitVersion": "\(v[^"]*\)".*/\1/p' | tail -1), node $NODE, device $DEVICE -> $RESOURCE"
say "image $REPO:$TAG ($PULL), chart $CHART, with $HELM"

# --- 1. preflight ------------------------------------------------------------------------------
k get node "$NODE" >/dev/null || die "node $NODE not found"
others=$(k get pods -A -l app.kubernetes.io/name=smarter-device-manager \
         --field-selector "spec.nodeName=$NODE" -o name 2>/dev/null)
[ -z "$others" ] || die "smarter-device-manager already runs on $NODE ($others): not touching it"
pass "node $NODE exists and runs no other smarter-device-manager"

k create namespace "$NS" >/dev/null || die "cannot create namespace $NS"
NS_CREATED=1
trap finish EXIT
k label namespace "$NS" pod-security.kubernetes.io/enforce=privileged >/dev/null

# --- 2. install --------------------------------------------------------------------------------
VALUES=$(mktemp)
cat >"$VALUES" <<EOF
{"image": {"repository": "$REPO", "tag": "$TAG", "pullPolicy": "$PULL"},
 "config": [{"devicematch": "^$(printf '%s' "$RULE" | sed 's/\\/\\\\/g')\$", "nummaxdevices": 2}],
 "removalGrace": 30}
EOF
if command -v helm >/dev/null; then
    helm install "$RELEASE" "$CHART" -n "$NS" -f "$VALUES" || die "helm install failed"
else
    "$PY" "$HERE/helm-sdk.py" install "$RELEASE" "$CHART" --namespace "$NS" --values "$VALUES" \
        ${KUBECONFIG:+--kubeconfig "$KUBECONFIG"} || die "helm install (helm-python-sdk) failed"
fi
INSTALLED=1
rm -f "$VALUES"
pass "chart installed as release $RELEASE in $NS"

# --- 3. label ------------------------------------------------------------------------------------
if [ "$(k get node "$NODE" -o jsonpath='{.metadata.labels.smarter-device-manager}')" = enabled ]; then
    say "node already labelled smarter-device-manager=enabled (left as it is)"
else
    k label node "$NODE" smarter-device-manager=enabled >/dev/null || die "cannot label $NODE"
    LABELLED=1
    pass "labelled $NODE smarter-device-manager=enabled"
fi

# --- 4. daemon ready, resource on the node -------------------------------------------------------
deadline=$(( $(date +%s) + TIMEOUT ))
POD=
while [ "$(date +%s)" -lt "$deadline" ]; do
    POD=$(k -n "$NS" get pods -l app.kubernetes.io/instance="$RELEASE" \
          --field-selector "spec.nodeName=$NODE" -o jsonpath='{.items[0].metadata.name}' 2>/dev/null)
    [ -n "$POD" ] && break
    sleep 1
done
[ -n "$POD" ] || die "no daemon pod on $NODE after ${TIMEOUT}s"
if k -n "$NS" wait --for=condition=Ready "pod/$POD" --timeout="$(( deadline - $(date +%s) ))s" >/dev/null; then
    pass "daemon pod $POD is Ready (its /readyz: registered with the kubelet)"
else
    k -n "$NS" describe pod "$POD" | tail -20
    k -n "$NS" logs "$POD" --tail=30
    die "daemon pod $POD not Ready"
fi
node_count() {  # node_count capacity|allocatable -> the count of $RESOURCE, empty if absent
    k get node "$NODE" -o "jsonpath={.status.$1}" | tr ',{}' '\n\n\n' \
        | sed -n "s|^\"$RESOURCE\":\"\([0-9]*\)\"$|\1|p"
}
ALLOC=
while [ "$(date +%s)" -lt "$deadline" ]; do
    ALLOC=$(node_count allocatable)
    [ -n "$ALLOC" ] && [ "$ALLOC" != 0 ] && break
    sleep 1
done
[ -n "$ALLOC" ] && [ "$ALLOC" != 0 ] || die "node $NODE does not show $RESOURCE (allocatable '$ALLOC')"
pass "node $NODE shows $RESOURCE: capacity $(node_count capacity), allocatable $ALLOC"

# --- 5. a client pod opens the device ------------------------------------------------------------
k -n "$NS" apply -f - >/dev/null <<EOF || die "cannot create the client pod"
apiVersion: v1
kind: Pod
metadata:
  name: smoke-client
spec:
  restartPolicy: Never
  automountServiceAccountToken: false
  nodeSelector:
    kubernetes.io/hostname: $NODE
  containers:
    - name: client
      image: $CLIENT_IMAGE
      imagePullPolicy: $PULL
      command: ["sh", "-c", "ls -l $DEVICE && exec 3<>$DEVICE && echo opened $DEVICE read-write"]
      securityContext:
        allowPrivilegeEscalation: false
        capabilities: {drop: [ALL]}
      resources:
        limits:
          $RESOURCE: 1
EOF
phase=
while [ "$(date +%s)" -lt "$deadline" ]; do
    phase=$(k -n "$NS" get pod smoke-client -o jsonpath='{.status.phase}')
    case "$phase" in Succeeded|Failed) break ;; esac
    sleep 1
done
out=$(k -n "$NS" logs smoke-client 2>&1)
printf '%s\n' "$out" | sed 's/^/         client: /'
if [ "$phase" = Succeeded ] && printf '%s' "$out" | grep -q "^opened $DEVICE read-write$"; then
    pass "client pod got $DEVICE and opened it (no privilege, no capability)"
else
    fail "client pod: phase '$phase'"
    k -n "$NS" describe pod smoke-client | tail -15
fi

# --- 6. metrics --------------------------------------------------------------------------------
PORT=$(k -n "$NS" get pod "$POD" -o jsonpath='{.spec.containers[0].ports[0].containerPort}')
metrics=$(k get --raw "/api/v1/namespaces/$NS/pods/$POD:$PORT/proxy/metrics" 2>&1)
printf '%s\n' "$metrics" | grep -E "^smarter_device_manager_(resources|allocations_total|registrations_total|build_info)" \
    | sed 's/^/         metrics: /'
if printf '%s' "$metrics" | grep -q "^smarter_device_manager_allocations_total{resource=\"$RESOURCE\"} 1\$" \
   && printf '%s' "$metrics" | grep -q '^smarter_device_manager_resources{state="registered"} 1$'; then
    pass "/metrics: 1 resource registered, 1 allocation of $RESOURCE"
else
    fail "/metrics does not show the registration and the allocation"
fi
finish
