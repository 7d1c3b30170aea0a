#!/usr/bin/env bash
# release-check.sh: the check a maintainer runs on a real cluster before tagging a release
# (docs/releasing.md). Run it ON THE NODE, as root, with kubectl pointing at the cluster
# (cluster-admin), e.g. on ../shared/tools/realk8s:
#
#   scripts/release-check.sh                  # build, load, device-plugin mode, DRA mode
#   scripts/release-check.sh --parts dp       # device-plugin mode only (Kubernetes < 1.34)
#   scripts/release-check.sh --no-build       # use the image already in dist/
#
# 1. builds the image (scripts/build-image.sh linux/amd64: the Dockerfile users get) and prints
#    its size, labels and --version, which must be the version in pyproject.toml;
# 2. loads it onto the node (the realk8s image tools' load-realk8s.sh, i.e. ctr images import);
# 3. device-plugin mode through the chart (a real Helm release, helm or helm-python-sdk), the
#    seed workflow: the node shows the resource; a pod gets its device; kill -9 of the daemon
#    (the pod restarts it, the node keeps the resource, the first pod keeps running); a second
#    pod waits while the first holds the only device and runs once the first goes; uninstall
#    leaves no socket in the kubelet's device-plugin dir;
# 4. DRA mode: scripts/dra-smoke.sh in image mode, with the same image (skipped, saying so, where
#    the cluster does not serve resource.k8s.io/v1);
# 5. cleans up what it made (namespace, release, test devices; the loaded image stays).
# One PASS/FAIL line per check, RELEASE-CHECK: PASS (exit 0) or RELEASE-CHECK: FAIL at the end.
#
# Environment: SDM_NODE (this node's name, default its hostname), IMAGE_TOOLS (default
# ../shared/tools/image), REALK8S_TOOLS (default ../shared/tools/realk8s), PYTHON (a python with helm-python-sdk, default .venv/bin/python).
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
export IMAGE_TOOLS=${IMAGE_TOOLS:-$ROOT/../shared/tools/image}
export REALK8S_TOOLS=${REALK8S_TOOLS:-$ROOT/../shared/tools/realk8s}
PY=${PYTHON:-$ROOT/.venv/bin/python}
PARTS=dp,dra BUILD=1
while [ $# -gt 0 ]; do
    case "$1" in
        --parts) PARTS=$2; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
[ "$(id -u)" = 0 ] || { echo "run as root on the node (it makes device nodes, reads the plugin dir)" >&2; exit 2; }
command -v kubectl >/dev/null || { echo "kubectl not on PATH (source the cluster's env.sh)" >&2; exit 2; }

VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' "$ROOT/pyproject.toml")
IMAGE=localhost/smarter-device-manager:dev
ARCHIVE=$ROOT/dist/smarter-device-manager-amd64.tar
NS=sdm-release-check
RELEASE=rc
DEV=sdm-rc0
RESOURCE=smarter-devices/$DEV
PLUGIN_DIR=/var/lib/kubelet/device-plugins
BUSYBOX=${REALK8S_BUSYBOX_IMAGE:-localhost/realk8s/busybox:local}
# The node this runs on (it makes the test devices here): its hostname, or SDM_NODE where the
# node's name is not its hostname. Never "the first node": other nodes may come and go.
NODE=${SDM_NODE:-$(hostname)}
kubectl get node "$NODE" >/dev/null 2>&1 ||
  { echo "no node $NODE in the cluster: run this on a node, or set SDM_NODE to this node's name" >&2; exit 2; }
FAILS=0 T0=$(date +%s)
say() { printf '[%4ss] %s\n' "$(( $(date +%s) - T0 ))" "$*"; }
pass() { say "PASS $*"; }
fail() { say "FAIL $*"; FAILS=$((FAILS + 1)); }
k() { kubectl -n "$NS" "$@"; }
wait_until() {  # SECONDS COMMAND...
    local end=$(( $(date +%s) + $1 )); shift
    until "$@"; do [ "$(date +%s)" -lt "$end" ] || return 1; sleep 0.5; done
}

say "release check of smarter-device-manager $VERSION on node $NODE: kubelet $(kubectl get node "$NODE" -o jsonpath='{.status.nodeInfo.kubeletVersion}'), runtime $(kubectl get node "$NODE" -o jsonpath='{.status.nodeInfo.containerRuntimeVersion}'); parts $PARTS"

# ---- 1. build -----------------------------------------------------------------------------------
mkdir -p "$ROOT/dist"
if [ "$BUILD" = 1 ]; then
    if "$HERE/build-image.sh" linux/amd64 >"$ROOT/dist/release-check-build.log" 2>&1; then
        pass "image built: $(tail -1 "$ROOT/dist/release-check-build.log" | sed 's/^== //') (log dist/release-check-build.log)"
    else
        tail -20 "$ROOT/dist/release-check-build.log"
        fail "image build"; say "RELEASE-CHECK: FAIL"; exit 1
    fi
fi
P="podman --runtime /usr/sbin/runc"
size=$($P image inspect "$IMAGE" --format '{{.Size}}') || { fail "no $IMAGE"; say "RELEASE-CHECK: FAIL"; exit 1; }
label=$($P image inspect "$IMAGE" --format '{{index .Config.Labels "org.opencontainers.image.version"}}')
said=$($P run --rm --network none --read-only --cap-drop=ALL "$IMAGE" --version)
if [ "$said" = "smarter-device-manager $VERSION" ] && [ "$label" = "$VERSION" ]; then
    pass "$IMAGE: $size bytes, label version $label, --version '$said', id $($P image inspect "$IMAGE" --format '{{.Id}}' | cut -c1-12)"
else
    fail "$IMAGE: label '$label', --version '$said', pyproject $VERSION"
fi

# ---- 2. load ------------------------------------------------------------------------------------
if "$IMAGE_TOOLS/load-realk8s.sh" "$ARCHIVE" >"$ROOT/dist/release-check-load.log" 2>&1; then
    pass "loaded $ARCHIVE onto the node ($(grep -c "smarter-device-manager" "$ROOT/dist/release-check-load.log") image line(s) listed)"
else
    cat "$ROOT/dist/release-check-load.log"; fail "load-realk8s.sh"
fi

# ---- 3. device-plugin mode: the seed workflow through the chart --------------------------------
helm_install() {  # RELEASE VALUES.json
    if command -v helm >/dev/null; then
        helm install "$1" "$ROOT/charts/smarter-device-manager" -n "$NS" -f "$2" --wait --timeout 180s
    else
        "$PY" "$HERE/helm-sdk.py" install "$1" "$ROOT/charts/smarter-device-manager" --namespace "$NS" --values "$2"
    fi
}
helm_uninstall() {
    if command -v helm >/dev/null; then helm uninstall "$1" -n "$NS" --wait; else "$PY" "$HERE/helm-sdk.py" uninstall "$1" --namespace "$NS"; fi
}
daemon_pod() { k get pods -l app.kubernetes.io/instance=$RELEASE -o jsonpath='{.items[0].metadata.name}' 2>/dev/null; }
daemon_ready() { [ "$(k get pods -l app.kubernetes.io/instance=$RELEASE -o jsonpath='{.items[0].status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" = True ]; }
restarts() { k get pods -l app.kubernetes.io/instance=$RELEASE -o jsonpath='{.items[0].status.containerStatuses[0].restartCount}' 2>/dev/null; }
node_count() {  # capacity|allocatable
    kubectl get node "$NODE" -o "jsonpath={.status.$1}" | tr ',{}' '\n\n\n' | sed -n "s|^\"$RESOURCE\":\"\([0-9]*\)\"$|\1|p"
}
phase() { k get pod "$1" -o jsonpath='{.status.phase}' 2>/dev/null; }
client_pod() {  # NAME
    k apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Pod
metadata: {name: $1}
spec:
  restartPolicy: Never
  terminationGracePeriodSeconds: 0
  automountServiceAccountToken: false
  nodeSelector: {kubernetes.io/hostname: $NODE}
  containers:
  - name: main
    image: $BUSYBOX
    imagePullPolicy: IfNotPresent
    command: [sh, -c, 'ls -l /dev/$DEV && exec 3<>/dev/$DEV && echo opened /dev/$DEV read-write && sleep 3600']
    securityContext: {allowPrivilegeEscalation: false, capabilities: {drop: [ALL]}}
    resources:
      limits: {$RESOURCE: 1}
EOF
}
got_device() {  # POD: Running and its log says it opened the device
    [ "$(phase "$1")" = Running ] && k logs "$1" 2>/dev/null | grep -q "^opened /dev/$DEV read-write$"
}
daemon_host_pid() {  # the daemon's PID on the host, from its container ID (ctr tasks)
    local id
    id=$(k get pod "$(daemon_pod)" -o jsonpath='{.status.containerStatuses[0].containerID}' | sed 's|.*://||')
    [ -n "$id" ] && ctr -n k8s.io tasks ls 2>/dev/null | awk -v id="$id" '$1 == id {print $2}'
}
our_sockets() { ls "$PLUGIN_DIR" 2>/dev/null | grep '^smarter-' | tr '\n' ' '; }

dp_part() {
    say "== device-plugin mode (chart, image $IMAGE)"
    rm -f "/dev/$DEV" && mknod -m 0666 "/dev/$DEV" c 1 3
    wait_until 120 eval '[ "$(kubectl get ns $NS -o jsonpath={.status.phase} 2>/dev/null)" != Terminating ]'
    kubectl create namespace "$NS" >/dev/null 2>&1
    kubectl label namespace "$NS" pod-security.kubernetes.io/enforce=privileged --overwrite >/dev/null
    cat >"$TMP/values.json" <<EOF
{"image": {"repository": "${IMAGE%:*}", "tag": "${IMAGE##*:}", "pullPolicy": "Never"},
 "config": [{"devicematch": "^$DEV\$", "nummaxdevices": 1}],
 "nodeSelector": {"smarter-device-manager": null, "kubernetes.io/hostname": "$NODE"},
 "removalGrace": 30}
EOF
    if helm_install "$RELEASE" "$TMP/values.json" >"$TMP/install.log" 2>&1; then
        pass "chart installed (release $RELEASE in $NS): $(grep -m1 -E 'STATUS|deployed|installed' "$TMP/install.log" | tr -s ' ')"
    else
        cat "$TMP/install.log"; fail "chart install"; return
    fi
    if wait_until 120 daemon_ready; then
        pass "daemon pod $(daemon_pod) Ready (its /readyz: registered with the kubelet)"
    else
        fail "daemon not Ready"; k describe pods | tail -20; k logs -l app.kubernetes.io/instance=$RELEASE --tail=20; return
    fi
    if wait_until 60 eval '[ "$(node_count allocatable)" = 1 ]'; then
        pass "node $NODE shows $RESOURCE: capacity $(node_count capacity), allocatable $(node_count allocatable)"
    else
        fail "node shows $RESOURCE allocatable '$(node_count allocatable)'"
    fi
    client_pod first
    if wait_until 90 got_device first; then
        pass "pod first is Running with the device: $(k logs first | head -2 | tr '\n' ' ')"
    else
        fail "pod first: phase '$(phase first)', log: $(k logs first 2>&1 | tail -3)"
    fi
    local pid before
    pid=$(daemon_host_pid) before=$(restarts)
    if [ -n "$pid" ] && kill -9 "$pid"; then
        say "     kill -9 $pid (the daemon, PID 1 of its container; restarts so far $before)"
        if wait_until 120 eval '[ "$(restarts)" -gt "$before" ] && daemon_ready'; then
            pass "daemon restarted by the kubelet (restartCount $(restarts)) and Ready again; sockets: $(our_sockets)"
        else
            fail "daemon not back after kill -9 (restartCount $(restarts))"
        fi
        wait_until 60 eval '[ "$(node_count allocatable)" = 1 ]' \
            && [ "$(phase first)" = Running ] \
            && pass "after the kill: node allocatable $RESOURCE = 1, pod first still Running" \
            || fail "after the kill: allocatable '$(node_count allocatable)', pod first '$(phase first)'"
    else
        fail "no host PID for the daemon's container"
    fi
    client_pod second
    sleep 10  # nothing can free the device while first holds it: second must still wait
    if [ "$(phase second)" = Pending ]; then
        pass "pod second waits while first holds the device: $(k get pod second -o jsonpath='{.status.conditions[?(@.type=="PodScheduled")].message}' | cut -c1-90)"
    else
        fail "pod second is '$(phase second)' while first holds the only device"
    fi
    k delete pod first --wait=false >/dev/null
    if wait_until 120 got_device second; then
        pass "first deleted: pod second is Running with the device"
    else
        fail "pod second: phase '$(phase second)' after first went"
    fi
    k delete pod second --wait=true --timeout=60s >/dev/null 2>&1
    say "     sockets while installed: $(our_sockets)"
    if helm_uninstall "$RELEASE" >"$TMP/uninstall.log" 2>&1; then pass "chart uninstalled"; else cat "$TMP/uninstall.log"; fail "uninstall"; fi
    if wait_until 90 eval '[ -z "$(k get pods -l app.kubernetes.io/instance=$RELEASE -o name 2>/dev/null)" ]' \
        && wait_until 30 eval '[ -z "$(our_sockets)" ]'; then
        pass "uninstall left no socket: $PLUGIN_DIR holds: $(ls "$PLUGIN_DIR" | tr '\n' ' ')"
    else
        fail "after uninstall: pods '$(k get pods -o name 2>/dev/null | tr '\n' ' ')', sockets '$(our_sockets)'"
    fi
}
dp_cleanup() {
    k delete pod first second --ignore-not-found --wait=false >/dev/null 2>&1
    helm_uninstall "$RELEASE" >/dev/null 2>&1
    kubectl delete namespace "$NS" --ignore-not-found --wait=true --timeout=120s >/dev/null 2>&1
    rm -f "/dev/$DEV"
}

TMP=$(mktemp -d)
trap 'dp_cleanup; rm -rf "$TMP"' EXIT
case ",$PARTS," in *,dp,*)
    dp_part
    dp_cleanup
    say "     device-plugin part cleaned up (namespace $NS deleted, /dev/$DEV removed)" ;;
esac

# ---- 4. DRA mode ----------------------------------------------------------------------------------
case ",$PARTS," in *,dra,*)
    say "== DRA mode (scripts/dra-smoke.sh, image mode, image $IMAGE)"
    if kubectl get --raw /apis/resource.k8s.io/v1 >/dev/null 2>&1; then
        SDM_SMOKE_IMAGE=$IMAGE SDM_SMOKE_PYTHON=$PY REALK8S_TOOLS=$REALK8S_TOOLS "$HERE/dra-smoke.sh" 2>&1 \
            | tee "$TMP/dra.log" | sed 's/^/       /'
        if grep -q "^DRA-SMOKE: PASS" "$TMP/dra.log"; then pass "dra-smoke.sh: $(grep '^DRA-SMOKE' "$TMP/dra.log")"; else fail "dra-smoke.sh: $(grep '^DRA-SMOKE' "$TMP/dra.log")"; fi
    else
        fail "the cluster does not serve resource.k8s.io/v1 (DRA needs Kubernetes >= 1.34): run with --parts dp here"
    fi ;;
esac

if [ "$FAILS" = 0 ]; then say "RELEASE-CHECK: PASS ($VERSION, parts $PARTS)"; exit 0; fi
say "RELEASE-CHECK: FAIL ($FAILS failed checks)"; exit 1
