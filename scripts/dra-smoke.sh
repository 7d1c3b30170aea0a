#!/usr/bin/env bash
# dra-smoke.sh — smarter-device-manager in DRA mode against a real cluster (Kubernetes >= 1.34 with
# resource.k8s.io/v1 and a CDI-enabled runtime: containerd >= 2.0, CRI-O). Run it ON A NODE, as
# root, with kubectl pointing at the cluster (cluster-admin):
#
#   scripts/dra-smoke.sh                 # the daemon from the image, deployed by the chart
#   scripts/dra-smoke.sh --host          # the daemon on this host (no image needed), same checks
#
# What it does, one PASS/FAIL line per check and DRA-SMOKE: PASS|FAIL at the end (exit 0 only if
# every check passed):
#   1. makes two test devices on this node, /dev/sdm-smoke0 and /dev/sdm-smoke1 (char 1:3, copies
#      of /dev/null), and a rule selecting ^sdm-smoke[0-9]+$; and /dev/sdm-ch340 (char 188:250), a
#      CH340 clone whose USB manufacturer string is Chinese (75 bytes of UTF-8, 25 characters), in
#      a fake sysfs tree the daemon reads instead of /sys (tests/fakesysfs.py; it also holds
#      /dev/null's 1:3 as the real one does);
#   2. deploys the daemon (chart rendered with dra.enabled=true; the device-plugin DaemonSet is
#      left out) and waits until it is Ready (registered with the kubelet, slices published);
#   3. checks the node's ResourceSlice: the devices with typed attributes, sdm-ch340's manufacturer
#      cut to at most 64 bytes on a character boundary (the API server counts bytes);
#   4. a ResourceClaim selecting sdm-smoke0 BY ATTRIBUTE (CEL on path/subsystem/major), a pod using
#      it runs and sees the device and the env; a second pod sharing the same claim sees it too;
#   5. a pod from a ResourceClaimTemplate gets sdm-smoke1; /dev/sdm-share0 (nummaxdevices 2) is
#      held by two claims at once (consumable capacity, Kubernetes >= 1.36) and a third waits;
#      a prioritized list (firstAvailable): a request whose first subrequest no device satisfies,
#      the second sdm-ch340, and a container naming the request gets the device;
#   6. plugs /dev/sdm-smoke2 and unplugs it again: the slice follows (times shown);
#   7. restarts the kubelet: it deletes the node's slices, the daemon publishes them again;
#   8. deletes the pods: the claims are unprepared (daemon log, checkpoint, claim specs);
#   9. pods written for device-plugin mode (DRAExtendedResource, beta and on in 1.36): the
#      dra-classes controller makes a DeviceClass per resource name; deploy/example-client-pod.yaml,
#      unchanged (resources.limits smarter-devices/ttyUSB0: 1), runs with /dev/ttyUSB0 (made as a
#      copy of /dev/null when the node has none); a second copy waits until the first is deleted;
#      three pods asking smarter-devices/sdm-share0: 1 (nummaxdevices 2): two run, the third waits;
#  10. cleans up everything it made (devices, objects, classes, the daemon and the controller).
#
# Environment:
#   SDM_SMOKE_IMAGE      image to deploy (default localhost/smarter-device-manager:dra, pull Never)
#   SDM_SMOKE_NAMESPACE  namespace for the daemon and the test objects (default sdm-dra-smoke)
#   SDM_SMOKE_API_SERVER host:port the daemon's pod uses for the API server; default: the
#                        kubernetes Service's endpoint when the cluster has no kube-proxy
#   SDM_SMOKE_KUBELET_RESTART  command that restarts the kubelet (default: realk8s's stop/start
#                        when $REALK8S_DIR or the realk8s tools are found, else systemctl)
#   SDM_SMOKE_PYTHON     a python with this project installed, for --host and for rendering the
#                        chart when `helm` is not installed (default: .venv/bin/python)
set -uo pipefail
HERE=$(cd "$(dirname "$0")/.." && pwd)
MODE=image
[[ ${1:-} == --host ]] && MODE=host
NS=${SDM_SMOKE_NAMESPACE:-sdm-dra-smoke}
IMAGE=${SDM_SMOKE_IMAGE:-localhost/smarter-device-manager:dra}
PY=${SDM_SMOKE_PYTHON:-$HERE/.venv/bin/python}
DRIVER=smarter-devices.io
REALK8S_TOOLS=${REALK8S_TOOLS:-$HERE/../shared/tools/realk8s}
# The node this runs on (it makes the test devices here): its hostname, or SDM_NODE where the
# node's name is not its hostname. Never "the first node": other nodes may come and go.
NODE=${SDM_NODE:-$(hostname)}
kubectl get node "$NODE" >/dev/null 2>&1 ||
  { echo "no node $NODE in the cluster: run this on a node, or set SDM_NODE to this node's name" >&2; exit 2; }
[[ -n ${SDM_SMOKE_NODE:-} ]] && NODE=$SDM_SMOKE_NODE
TMP=$(mktemp -d)
FAILS=0
T0=$(date +%s%N)
# The removal grace of unplugged devices (step 6a needs > 60 s: "still Unhealthy after 60 s").
GRACE=${SDM_SMOKE_GRACE:-90}
DAEMON_PID=""
CLASSES_PID=""
MADE_TTY=""
# DRA names (docs/dra.md): sdm-ch340 is a USB device in the fake sysfs, so it is named by its identity
# (its kernel name without the number, then its port: no serial); the others are not USB devices.
CH340_DEV=sdm-ch-usb-1-1-2
EXPECTED_SLICE="$CH340_DEV sdm-share0 sdm-smoke0 sdm-smoke1 ttyusb0 "
# shellcheck source=scripts/lib-cluster.sh
source "$HERE/scripts/lib-cluster.sh"  # pass, fail, note, wait_until, claim_pods_gone
ms_since() { echo $((($(date +%s%N) - $1) / 1000000)); }
k() { kubectl -n "$NS" "$@"; }

if ! kubectl get --raw /apis/resource.k8s.io/v1 2>/dev/null | grep -q '"resourceslices"'; then
  echo "FAIL resource.k8s.io/v1 is not served by this cluster (DRA needs Kubernetes >= 1.34)"
  echo "DRA-SMOKE: FAIL"
  exit 1
fi
[[ $(id -u) == 0 ]] || { echo "FAIL run as root on the node (it makes device nodes in /dev)"; exit 1; }
pass "resource.k8s.io/v1 served; node $NODE, kubelet $(kubectl get node "$NODE" -o jsonpath='{.status.nodeInfo.kubeletVersion}'), runtime $(kubectl get node "$NODE" -o jsonpath='{.status.nodeInfo.containerRuntimeVersion}'), mode: $MODE"

daemon_log() {
  if [[ $MODE == host ]]; then cat "$TMP/daemon.log"; else k logs -l app.kubernetes.io/name=smarter-device-manager-dra --tail=-1 2>/dev/null; fi
}
slice_devices() {  # names of the devices in our slices of this node
  kubectl get resourceslices --field-selector "spec.nodeName=$NODE,spec.driver=$DRIVER" \
    -o jsonpath='{range .items[*].spec.devices[*]}{.name}{"\n"}{end}' 2>/dev/null | sort | tr '\n' ' '
}
cleanup() {
  claim_pods_gone "$NS"
  kubectl delete ns "$NS" --ignore-not-found --wait=false >/dev/null 2>&1
  if [[ -f $TMP/objects.yaml ]]; then kubectl delete -f "$TMP/objects.yaml" --ignore-not-found >/dev/null 2>&1; fi
  if [[ -n $DAEMON_PID && -d /proc/$DAEMON_PID ]]; then kill -TERM "$DAEMON_PID"; wait "$DAEMON_PID" 2>/dev/null; fi
  if [[ -n $CLASSES_PID && -d /proc/$CLASSES_PID ]]; then kill -TERM "$CLASSES_PID"; wait "$CLASSES_PID" 2>/dev/null; fi
  kubectl delete deviceclasses -l app.kubernetes.io/managed-by=smarter-device-manager-dra-classes >/dev/null 2>&1
  [[ -n $MADE_TTY ]] && rm -f /dev/ttyUSB0
  kubectl delete resourceslices --field-selector "spec.nodeName=$NODE,spec.driver=$DRIVER" >/dev/null 2>&1
  rm -f /dev/sdm-smoke0 /dev/sdm-smoke1 /dev/sdm-smoke2 /dev/sdm-smoke3 /dev/sdm-share0 /dev/sdm-ch340
  # The node-wide CDI spec outlives the daemon on purpose (a container restarted while the driver
  # is away still finds its devices); this test's devices are gone, so its spec goes too.
  rm -f "/var/run/cdi/$DRIVER-device.json"
  rm -rf "$TMP"
}
trap cleanup EXIT

# ---- 1. test devices and the rule
for i in smoke0 smoke1 share0; do rm -f "/dev/sdm-$i"; mknod -m 0666 "/dev/sdm-$i" c 1 3; done
# The example client pod asks for smarter-devices/ttyUSB0: a stand-in adapter when there is none.
[[ -e /dev/ttyUSB0 ]] || { mknod -m 0666 /dev/ttyUSB0 c 1 3 && MADE_TTY=1; }
rm -f /dev/sdm-ch340
mknod -m 0666 /dev/sdm-ch340 c 188 250
CJK_MAKER="深圳市沁恒微电子有限公司南京分公司制造的串口转换器"
SYS=$TMP/sys
"$PY" - "$HERE/tests" "$SYS" "$CJK_MAKER" <<'PYEOF' || fail "could not make the fake sysfs tree in $SYS"
import sys
sys.path.insert(0, sys.argv[1])
from fakesysfs import FakeSysfs
fake = FakeSysfs(sys.argv[2])
fake.null()  # 1:3, subsystem mem: what sdm-smoke*, sdm-share0 (and a stand-in ttyUSB0) are copies of
fake.usb_serial("1-1.2", "ttyUSB250", 250, vid="1a86", pid="7523", manufacturer=sys.argv[3],
                product="USB Serial", serial=None, driver="ch341")
PYEOF
CONFIG='[{"devicematch": "^sdm-smoke[0-9]+$", "nummaxdevices": 1}, {"devicematch": "^sdm-share0$", "nummaxdevices": 2}, {"devicematch": "^sdm-ch340$", "nummaxdevices": 1}, {"devicematch": "^ttyUSB0$", "nummaxdevices": 1}]'
wait_until 120 eval '[[ $(kubectl get ns "$NS" -o jsonpath="{.status.phase}" 2>/dev/null) != Terminating ]]' ||
  fail "namespace $NS is still terminating from an earlier run"
kubectl create namespace "$NS" >/dev/null 2>&1
kubectl label namespace "$NS" pod-security.kubernetes.io/enforce=privileged --overwrite >/dev/null
pass "made /dev/sdm-smoke0, /dev/sdm-smoke1, /dev/sdm-share0 (char 1:3), /dev/sdm-ch340 (188:250, fake sysfs $SYS)${MADE_TTY:+, /dev/ttyUSB0} on $NODE; rules ^sdm-smoke[0-9]+\$ (1), ^sdm-share0\$ (2), ^sdm-ch340\$ (1), ^ttyUSB0\$ (1)"

# ---- 2. the daemon
if [[ $MODE == host ]]; then
  printf -- '- devicematch: ^sdm-smoke[0-9]+$\n  nummaxdevices: 1\n- devicematch: ^sdm-share0$\n  nummaxdevices: 2\n- devicematch: ^sdm-ch340$\n  nummaxdevices: 1\n- devicematch: ^ttyUSB0$\n  nummaxdevices: 1\n' \
    >"$TMP/conf.yaml"
  "$PY" -m smarter_device_manager dra --node-name "$NODE" --kubeconfig "${KUBECONFIG:-$HOME/.kube/config}" \
    --config "$TMP/conf.yaml" --state-dir "$TMP/state" --sys-dir "$SYS" --http-address 127.0.0.1:18089 \
    --removal-grace "$GRACE" >"$TMP/daemon.log" 2>&1 &
  DAEMON_PID=$!
  # What the chart runs besides: the dra-classes controller (the admin kubeconfig here).
  "$PY" -m smarter_device_manager dra-classes --kubeconfig "${KUBECONFIG:-$HOME/.kube/config}" --grace 30 \
    --http-address 127.0.0.1:18090 >"$TMP/classes.log" 2>&1 &
  CLASSES_PID=$!
  # What the chart would make besides the daemon: the DeviceClass users name in claims.
  cat >"$TMP/objects.yaml" <<EOF
apiVersion: resource.k8s.io/v1
kind: DeviceClass
metadata: {name: $DRIVER}
spec:
  selectors:
  - cel: {expression: 'device.driver == "$DRIVER"'}
EOF
  kubectl apply -f "$TMP/objects.yaml" >/dev/null || fail "kubectl apply of the DeviceClass"
  ready() { [[ $(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:18089/readyz) == 200 ]]; }
  readyz() { curl -s http://127.0.0.1:18089/readyz; }
  metrics() { curl -s http://127.0.0.1:18089/metrics; }
  classes_log() { cat "$TMP/classes.log"; }
else
  API=${SDM_SMOKE_API_SERVER:-}
  if [[ -z $API ]] && ! kubectl -n kube-system get ds kube-proxy >/dev/null 2>&1; then
    API=$(kubectl get endpoints kubernetes -o jsonpath='{.subsets[0].addresses[0].ip}:{.subsets[0].ports[0].port}')
    note "no kube-proxy: the daemon reaches the API server at $API"
  fi
  VALUES=$("$PY" -c '
import json, sys
config, node, image, api, sys_dir, grace = sys.argv[1:]
dra = {"enabled": True, "hostSys": sys_dir}  # the fake sysfs tree (step 1) instead of /sys
if api:
    dra["apiServer"] = {"host": api.rsplit(":", 1)[0], "port": int(api.rsplit(":", 1)[1])}
print(json.dumps({"fullnameOverride": "sdm-smoke", "config": json.loads(config), "logLevel": "debug",
                  "removalGrace": int(grace),
                  # this node only (null drops the chart default label; Helm merges maps)
                  "nodeSelector": {"smarter-device-manager": None, "kubernetes.io/hostname": node},
                  "image": {"repository": image.rsplit(":", 1)[0], "tag": image.rsplit(":", 1)[1],
                            "pullPolicy": "Never"}, "dra": dra}))' "$CONFIG" "$NODE" "$IMAGE" "$API" "$SYS" "$GRACE")
  if command -v helm >/dev/null; then
    echo "$VALUES" >"$TMP/values.json"
    helm template sdm-smoke "$HERE/charts/smarter-device-manager" -n "$NS" -f "$TMP/values.json" >"$TMP/rendered.yaml"
  else
    "$PY" - "$HERE/charts/smarter-device-manager" "$NS" "$VALUES" >"$TMP/rendered.yaml" <<'EOF'
import json, sys
import helm_python as helm
with helm.Chart.load(sys.argv[1]) as chart:
    out = chart.render(json.loads(sys.argv[3]), name="sdm-smoke", namespace=sys.argv[2])
print("\n---\n".join(text for path, text in sorted(out.items()) if not path.endswith(".txt")))
EOF
  fi
  # DRA mode replaces the device-plugin DaemonSet: leave that one out.
  "$PY" -c '
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
keep = [d for d in docs if not (d["kind"] == "DaemonSet" and not d["metadata"]["name"].endswith("-dra"))]
print(yaml.safe_dump_all(keep))' "$TMP/rendered.yaml" >"$TMP/objects.yaml"
  if kubectl apply -f "$TMP/objects.yaml" >"$TMP/apply.log" 2>&1; then
    pass "chart (dra.enabled=true, image $IMAGE) applied: $(grep -c . "$TMP/apply.log") objects"
  else
    fail "kubectl apply of the chart: $(cat "$TMP/apply.log")"
  fi
  pod() { k get pods -l app.kubernetes.io/name=smarter-device-manager-dra -o jsonpath='{.items[0].metadata.name}' 2>/dev/null; }
  ready() { [[ $(k get pods -l app.kubernetes.io/name=smarter-device-manager-dra -o jsonpath='{.items[0].status.conditions[?(@.type=="Ready")].status}' 2>/dev/null) == True ]]; }
  readyz() { kubectl get --raw "/api/v1/namespaces/$NS/pods/$(pod):8080/proxy/readyz" 2>&1; }
  metrics() { kubectl get --raw "/api/v1/namespaces/$NS/pods/$(pod):8080/proxy/metrics" 2>&1; }
  classes_log() { k logs -l app.kubernetes.io/name=smarter-device-manager-dra-classes --tail=-1 2>/dev/null; }
fi
t=$(date +%s%N)
if wait_until 120 ready; then
  pass "the daemon is Ready in $(ms_since "$t") ms: $(readyz | head -1)"
else
  fail "the daemon is not Ready after 120 s: $(readyz)"
  daemon_log | tail -20 | sed 's/^/       /'
  [[ $MODE == image ]] && k describe pods | tail -20 | sed 's/^/       /'
fi

# ---- 3. the slice
if wait_until 20 eval '[[ $(slice_devices) == "$EXPECTED_SLICE" ]]'; then
  pass "ResourceSlice of $NODE lists: $(slice_devices)"
  kubectl get resourceslices --field-selector "spec.nodeName=$NODE,spec.driver=$DRIVER" \
    -o jsonpath='{.items[0].spec.devices}' | "$PY" -c '
import json, sys
for d in json.load(sys.stdin):
    attrs = ", ".join(f"{k}={list(v.values())[0]!r}" for k, v in sorted(d["attributes"].items()))
    name, capacity = d["name"], d.get("capacity")
    extra = f"; allowMultipleAllocations, capacity {capacity}" if d.get("allowMultipleAllocations") else ""
    print(f"     {name}: {attrs}{extra}")'
  maker=$(kubectl get resourceslices --field-selector "spec.nodeName=$NODE,spec.driver=$DRIVER" \
    -o jsonpath='{.items[*].spec.devices[?(@.name=="'"$CH340_DEV"'")].attributes.manufacturer.string}')
  if "$PY" -c 'import sys; m, full = sys.argv[1:]; sys.exit(not (m and len(m.encode()) <= 64 and full.startswith(m)))' "$maker" "$CJK_MAKER"; then
    pass "sdm-ch340's manufacturer is cut to $(printf %s "$maker" | wc -c) bytes on a character boundary: $maker"
  else
    fail "sdm-ch340's manufacturer: '$maker'"
  fi
else
  fail "ResourceSlice devices: '$(slice_devices)'"
fi

# ---- 4. a claim by attribute, shared by two pods
cat >"$TMP/claims.yaml" <<EOF
apiVersion: resource.k8s.io/v1
kind: ResourceClaim
metadata: {name: smoke-shared, namespace: $NS}
spec:
  devices:
    requests:
    - name: dev
      exactly:
        deviceClassName: $DRIVER
        selectors:
        - cel:
            expression: >-
              device.attributes["$DRIVER"].path == "/dev/sdm-smoke0" &&
              device.attributes["$DRIVER"].subsystem == "mem" && device.attributes["$DRIVER"].major == 1
---
apiVersion: resource.k8s.io/v1
kind: ResourceClaimTemplate
metadata: {name: smoke-template, namespace: $NS}
spec:
  spec:
    devices:
      requests:
      - name: dev
        exactly:
          deviceClassName: $DRIVER
          selectors:
          - cel: {expression: 'device.attributes["$DRIVER"].path == "/dev/sdm-smoke1"'}
EOF
kubectl apply -f "$TMP/claims.yaml" >/dev/null || fail "kubectl apply of the claims"
BUSYBOX=${REALK8S_BUSYBOX_IMAGE:-busybox:1.36}
mkpod() {  # NAME CLAIM-FIELD [REQUEST]
  local claims="{name: dev}"
  [[ -n ${3:-} ]] && claims="{name: dev, request: $3}"
  cat <<EOF
apiVersion: v1
kind: Pod
metadata: {name: $1, namespace: $NS}
spec:
  restartPolicy: Never
  terminationGracePeriodSeconds: 0
  resourceClaims:
  - {name: dev, $2}
  containers:
  - name: main
    image: $BUSYBOX
    imagePullPolicy: IfNotPresent
    command: [sh, -c, 'sleep 3600']
    resources:
      claims: [$claims]
EOF
}
phase() { k get pod "$1" -o jsonpath='{.status.phase}' 2>/dev/null; }
check_pod() {  # POD DEVICE
  local dev env
  if wait_until 90 eval '[[ $(phase '"$1"') == Running ]]'; then
    dev=$(k exec "$1" -- stat -c '%F %t:%T %n' "/dev/$2" 2>&1)
    env=$(k exec "$1" -- sh -c 'env | grep ^SMARTER_DEVICES_' 2>&1)
    if [[ $dev == "character special file 1:3 /dev/$2" ]]; then
      pass "pod $1 is Running and sees /dev/$2 (char 1:3), env $env"
    else
      fail "pod $1: /dev/$2: '$dev'"
    fi
  else
    fail "pod $1 phase '$(phase "$1")'"
    k describe pod "$1" | tail -8 | sed 's/^/       /'
  fi
}
t=$(date +%s%N)
mkpod smoke-a "resourceClaimName: smoke-shared" | kubectl apply -f - >/dev/null
check_pod smoke-a sdm-smoke0
alloc=$(k get resourceclaim smoke-shared -o jsonpath='{.status.allocation.devices.results[0].pool}/{.status.allocation.devices.results[0].device}')
[[ $alloc == "$NODE/sdm-smoke0" ]] && pass "claim smoke-shared (CEL on path, subsystem, major) allocated $alloc" ||
  fail "claim smoke-shared allocated '$alloc'"
mkpod smoke-b "resourceClaimName: smoke-shared" | kubectl apply -f - >/dev/null
check_pod smoke-b sdm-smoke0
users=$(k get resourceclaim smoke-shared -o jsonpath='{.status.reservedFor[*].name}')
[[ $users == *smoke-a* && $users == *smoke-b* ]] && pass "claim smoke-shared is shared: reserved for $users" ||
  fail "claim smoke-shared reserved for '$users'"

# ---- 5. a claim from a template
mkpod smoke-c "resourceClaimTemplateName: smoke-template" | kubectl apply -f - >/dev/null
check_pod smoke-c sdm-smoke1

# ---- 5a. a prioritized list (firstAvailable): the first alternative fits no device, the second
# does; the allocation result names "dev/ch340" and the container, naming the request "dev", must
# still get the device (the kubelet matches request names exactly: the driver answers "dev")
cat >"$TMP/first.yaml" <<EOF
apiVersion: resource.k8s.io/v1
kind: ResourceClaimTemplate
metadata: {name: smoke-first, namespace: $NS}
spec:
  spec:
    devices:
      requests:
      - name: dev
        firstAvailable:
        - name: exotic
          deviceClassName: $DRIVER
          selectors:
          - cel: {expression: '"noSuchAttribute" in device.attributes["$DRIVER"]'}
        - name: ch340
          deviceClassName: $DRIVER
          selectors:
          - cel: {expression: 'device.attributes["$DRIVER"].idVendor == "1a86"'}
EOF
if kubectl apply -f "$TMP/first.yaml" >"$TMP/first.log" 2>&1; then
  mkpod smoke-f "resourceClaimTemplateName: smoke-first" dev | kubectl apply -f - >/dev/null
  if wait_until 90 eval '[[ $(phase smoke-f) == Running ]]'; then
    claim=$(k get pod smoke-f -o jsonpath='{.status.resourceClaimStatuses[0].resourceClaimName}')
    request=$(k get resourceclaim "$claim" -o jsonpath='{.status.allocation.devices.results[0].request}')
    dev=$(k exec smoke-f -- stat -c '%F %t:%T %n' /dev/sdm-ch340 2>&1)
    if [[ $request == dev/ch340 && $dev == "character special file bc:fa /dev/sdm-ch340" ]]; then
      pass "firstAvailable: claim $claim allocated by subrequest $request; the container naming request dev sees $dev"
    else
      fail "firstAvailable: allocation request '$request', /dev/sdm-ch340 in the container: '$dev'"
    fi
  else
    fail "pod smoke-f (firstAvailable) phase '$(phase smoke-f)'"
    k describe pod smoke-f | tail -8 | sed 's/^/       /'
  fi
  k delete pod smoke-f --wait=false >/dev/null 2>&1
else
  fail "kubectl apply of the firstAvailable template (DRAPrioritizedList: beta since 1.33, GA in 1.36): $(cat "$TMP/first.log")"
fi

# ---- 5b. one device held by two claims at once (nummaxdevices 2), a third claim waits
cat >"$TMP/share.yaml" <<EOF
apiVersion: resource.k8s.io/v1
kind: ResourceClaimTemplate
metadata: {name: smoke-share, namespace: $NS}
spec:
  spec:
    devices:
      requests:
      - name: dev
        exactly:
          deviceClassName: $DRIVER
          selectors:
          - cel: {expression: 'device.attributes["$DRIVER"].path == "/dev/sdm-share0"'}
EOF
kubectl apply -f "$TMP/share.yaml" >/dev/null || fail "kubectl apply of smoke-share"
for p in smoke-s1 smoke-s2 smoke-s3; do mkpod "$p" "resourceClaimTemplateName: smoke-share" | kubectl apply -f - >/dev/null; done
running() { local n=0 p; for p in smoke-s1 smoke-s2 smoke-s3; do [[ $(phase $p) == Running ]] && n=$((n + 1)); done; echo $n; }
wait_until 90 eval '[[ $(running) == 2 ]]'
sleep 3  # the third stays Pending: nothing frees a share
waiting=""
for p in smoke-s1 smoke-s2 smoke-s3; do
  if [[ $(phase $p) == Running ]]; then check_pod "$p" sdm-share0; else waiting=$p; fi
done
shares=$(k get resourceclaims -o jsonpath='{range .items[*]}{.status.allocation.devices.results[0].device}/{.status.allocation.devices.results[0].shareID}{" "}{end}' | tr ' ' '\n' | grep '^sdm-share0/.' | sort -u | wc -l)
if [[ $(running) == 2 && $shares == 2 && -n $waiting ]]; then
  pass "sdm-share0 (nummaxdevices 2) is held by 2 claims with distinct share IDs; $waiting waits: $(k get events --field-selector involvedObject.name=$waiting -o jsonpath='{.items[-1].message}' | cut -c1-60)"
else
  fail "sdm-share0: $(running) pods running, $shares distinct shares, waiting '$waiting'"
fi
k delete pod smoke-s1 smoke-s2 smoke-s3 --wait=false >/dev/null 2>&1
daemon_log | grep -E "NodePrepareResources" | sed 's/^/     daemon: /' | cut -c1-220

# ---- 6. plug and unplug
t=$(date +%s%N)
mknod -m 0666 /dev/sdm-smoke2 c 1 3
if wait_until 10 eval '[[ $(slice_devices) == *sdm-smoke2* ]]'; then
  pass "plugged /dev/sdm-smoke2: in the ResourceSlice after $(ms_since "$t") ms (kubectl polling included)"
else
  fail "sdm-smoke2 not in the slice after 10 s: $(slice_devices)"
fi
taints_of() {  # DEVICE -> its taints in our slices, as JSON
  kubectl get resourceslices --field-selector "spec.nodeName=$NODE,spec.driver=$DRIVER" \
    -o jsonpath='{.items[*].spec.devices[?(@.name=="'"$1"'")].taints}' 2>/dev/null
}
t=$(date +%s%N)
rm -f /dev/sdm-smoke2
if wait_until 10 eval '[[ $(taints_of sdm-smoke2) == *"$DRIVER/unplugged"* ]]'; then
  pass "unplugged /dev/sdm-smoke2: tainted in the ResourceSlice after $(ms_since "$t") ms: $(taints_of sdm-smoke2)"
else
  fail "sdm-smoke2 not tainted after 10 s: '$(taints_of sdm-smoke2)'"
fi
if wait_until $((GRACE + 30)) eval '[[ $(slice_devices) != *sdm-smoke2* ]]'; then
  pass "sdm-smoke2 left the ResourceSlice after the removal grace ($GRACE s): $(ms_since "$t") ms after the unplug"
else
  fail "sdm-smoke2 still in the slice $((GRACE + 30)) s after the unplug"
fi

# ---- 6a. device health in the pod's status, and the taint (ResourceHealthStatus, DRADeviceTaints)
health_of() {  # POD -> "<health> <message>" of its first device
  k get pod "$1" -o jsonpath='{.status.containerStatuses[0].allocatedResourcesStatus[0].resources[0].health} {.status.containerStatuses[0].allocatedResourcesStatus[0].resources[0].message}' 2>/dev/null
}
if wait_until 60 eval '[[ $(health_of smoke-c) == Healthy* ]]'; then
  pass "pod smoke-c's allocatedResourcesStatus: $(k get pod smoke-c -o jsonpath='{.status.containerStatuses[0].allocatedResourcesStatus}')"
else
  fail "pod smoke-c's device health: '$(health_of smoke-c)' (want Healthy); daemon log: $(daemon_log | grep -i health | tail -2)"
fi
t=$(date +%s%N)
rm -f /dev/sdm-smoke1
if wait_until 10 eval '[[ $(health_of smoke-c) == "Unhealthy unplugged"* ]]'; then
  took=$(ms_since "$t")
  if ((took <= 2000)); then
    pass "unplugged /dev/sdm-smoke1: pod smoke-c shows '$(health_of smoke-c)' after $took ms (target <= 2 s, kubectl polling included)"
  else
    fail "pod smoke-c became Unhealthy only after $took ms (target <= 2 s)"
  fi
else
  fail "pod smoke-c's device health 10 s after the unplug: '$(health_of smoke-c)'"
fi
stamp=$(taints_of sdm-smoke1)
[[ $stamp == *'"effect":"NoSchedule"'* && $stamp == *timeAdded* ]] && pass "sdm-smoke1's taint: $stamp" ||
  fail "sdm-smoke1's taint: '$stamp'"
# What a taint does to new claims, on a device no claim holds (sdm-smoke1 is smoke-c's): a new
# claim for it stays unallocated; one that tolerates the taint gets it.
mknod -m 0666 /dev/sdm-smoke3 c 1 3
wait_until 10 eval '[[ $(slice_devices) == *" sdm-smoke3 "* ]]' || fail "sdm-smoke3 not in the slice"
rm -f /dev/sdm-smoke3
wait_until 10 eval '[[ $(taints_of sdm-smoke3) == *"$DRIVER/unplugged"* ]]' ||
  fail "sdm-smoke3 not tainted 10 s after its unplug: '$(taints_of sdm-smoke3)'"
for tol in no yes; do
  toleration=""
  [[ $tol == yes ]] && toleration="tolerations: [{key: $DRIVER/unplugged, operator: Exists, effect: NoSchedule}]"
  cat <<YAML | kubectl apply -f - >/dev/null
apiVersion: resource.k8s.io/v1
kind: ResourceClaim
metadata: {name: smoke-taint-$tol, namespace: $NS}
spec:
  devices:
    requests:
    - name: dev
      exactly:
        deviceClassName: $DRIVER
        selectors:
        - cel: {expression: 'device.attributes["$DRIVER"].path == "/dev/sdm-smoke3"'}
        $toleration
YAML
  mkpod "smoke-taint-$tol" "resourceClaimName: smoke-taint-$tol" | kubectl apply -f - >/dev/null
done
allocated() { k get resourceclaim "$1" -o jsonpath='{.status.allocation.devices.results[0].device}' 2>/dev/null; }
if wait_until 30 eval '[[ $(allocated smoke-taint-yes) == sdm-smoke3 ]]'; then
  pass "a claim tolerating $DRIVER/unplugged was allocated the unplugged sdm-smoke3"
else
  fail "the tolerating claim: allocated '$(allocated smoke-taint-yes)'"
fi
if [[ -z $(allocated smoke-taint-no) && $(phase smoke-taint-no) == Pending ]]; then
  pass "a claim without the toleration stays unallocated, its pod Pending: $(k get pod smoke-taint-no -o jsonpath='{.status.conditions[0].message}' | cut -c1-160)"
else
  fail "the claim without the toleration: allocated '$(allocated smoke-taint-no)', pod $(phase smoke-taint-no)"
fi
k delete pod smoke-taint-no smoke-taint-yes --wait=false >/dev/null 2>&1
k delete resourceclaim smoke-taint-no smoke-taint-yes --wait=false >/dev/null 2>&1
mknod -m 0666 /dev/sdm-smoke3 c 1 3  # back: untainted, so the slice is whole again for step 7
EXPECTED_SLICE="$CH340_DEV sdm-share0 sdm-smoke0 sdm-smoke1 sdm-smoke3 ttyusb0 "
wait_until 90 eval '(( $(ms_since "$t") >= 62000 ))'
[[ $(health_of smoke-c) == "Unhealthy unplugged"* ]] && pass "62 s after the unplug: '$(health_of smoke-c)'" ||
  fail "62 s after the unplug: '$(health_of smoke-c)' (want Unhealthy)"
t=$(date +%s%N)
mknod -m 0666 /dev/sdm-smoke1 c 1 3
if wait_until 10 eval '[[ $(health_of smoke-c) == "Healthy " && -z $(taints_of sdm-smoke1) ]]'; then
  pass "replugged /dev/sdm-smoke1: Healthy and untainted after $(ms_since "$t") ms"
else
  fail "after the replug: health '$(health_of smoke-c)', taints '$(taints_of sdm-smoke1)'"
fi
# The daemon stopped: the kubelet's stream ends and the device shows Unknown. Then it comes back
# with --unplugged-taint-effect NoExecute, and an unplug evicts the pod that holds the device.
if [[ $MODE == host ]]; then
  kill -TERM "$DAEMON_PID"
  wait "$DAEMON_PID" 2>/dev/null
  # The kubelet clears the driver's health when the stream ends; the pod's status shows it at the
  # kubelet's next sync of that pod (--sync-frequency, 1 min by default, plus jitter).
  if wait_until 150 eval '[[ $(health_of smoke-c) == Unknown* ]]'; then
    pass "daemon stopped: smoke-c shows '$(health_of smoke-c)'"
  else
    fail "daemon stopped: smoke-c shows '$(health_of smoke-c)' (want Unknown)"
  fi
  "$PY" -m smarter_device_manager dra --node-name "$NODE" --kubeconfig "${KUBECONFIG:-$HOME/.kube/config}" \
    --config "$TMP/conf.yaml" --state-dir "$TMP/state" --sys-dir "$SYS" --http-address 127.0.0.1:18089 \
    --removal-grace "$GRACE" --unplugged-taint-effect NoExecute >>"$TMP/daemon.log" 2>&1 &
  DAEMON_PID=$!
else
  k patch ds sdm-smoke-dra --type merge -p '{"spec":{"template":{"spec":{"nodeSelector":{"sdm-smoke-off":"yes"}}}}}' >/dev/null
  # The kubelet clears the driver's health when the stream ends; the pod's status shows it at the
  # kubelet's next sync of that pod (--sync-frequency, 1 min by default, plus jitter).
  if wait_until 150 eval '[[ $(health_of smoke-c) == Unknown* ]]'; then
    pass "daemon stopped: smoke-c shows '$(health_of smoke-c)'"
  else
    fail "daemon stopped: smoke-c shows '$(health_of smoke-c)' (want Unknown)"
  fi
  k get ds sdm-smoke-dra -o json | "$PY" -c '
import json, sys
ds = json.load(sys.stdin)
spec = ds["spec"]["template"]["spec"]
spec["nodeSelector"].pop("sdm-smoke-off", None)
c = spec["containers"][0]
c["args"] = [a.replace("--unplugged-taint-effect=NoSchedule", "--unplugged-taint-effect=NoExecute") for a in c["args"]]
for key in ("resourceVersion", "uid", "creationTimestamp", "generation", "managedFields"):
    ds["metadata"].pop(key, None)
ds.pop("status", None)
print(json.dumps(ds))' | kubectl replace -f - >/dev/null
fi
wait_until 120 ready || fail "the daemon is not Ready again with NoExecute: $(readyz)"
if wait_until 60 eval '[[ $(health_of smoke-c) == Healthy* ]]'; then
  pass "daemon back (NoExecute): smoke-c is Healthy again"
else
  fail "daemon back: smoke-c shows '$(health_of smoke-c)'"
fi
t=$(date +%s%N)
rm -f /dev/sdm-smoke1
evicted() { [[ -z $(phase smoke-c) || -n $(k get pod smoke-c -o jsonpath='{.metadata.deletionTimestamp}' 2>/dev/null) ]]; }
if wait_until 120 evicted; then
  pass "NoExecute: pod smoke-c (holding the unplugged sdm-smoke1) evicted after $(ms_since "$t") ms"
  k get events --field-selector involvedObject.name=smoke-c 2>/dev/null | tail -3 | cut -c1-200 | sed 's/^/     /'
else
  fail "NoExecute: pod smoke-c still there 120 s after the unplug; taint: $(taints_of sdm-smoke1)"
fi
mknod -m 0666 /dev/sdm-smoke1 c 1 3

# ---- 7. kubelet restart
RESTART=${SDM_SMOKE_KUBELET_RESTART:-}
if [[ -z $RESTART ]]; then
  if [[ -x $REALK8S_TOOLS/stop.sh ]]; then
    RESTART="$REALK8S_TOOLS/stop.sh kubelet && $REALK8S_TOOLS/start.sh"
  else
    RESTART="systemctl restart kubelet"
  fi
fi
before=$(kubectl get resourceslices --field-selector "spec.nodeName=$NODE,spec.driver=$DRIVER" -o jsonpath='{.items[0].metadata.uid}')
t=$(date +%s%N)
note "restarting the kubelet: $RESTART"
bash -c "$RESTART" >"$TMP/restart.log" 2>&1 || fail "kubelet restart command failed: $(tail -3 "$TMP/restart.log")"
back() {
  local uid
  uid=$(kubectl get resourceslices --field-selector "spec.nodeName=$NODE,spec.driver=$DRIVER" -o jsonpath='{.items[0].metadata.uid}' 2>/dev/null)
  [[ -n $uid && $uid != "$before" && $(slice_devices) == "$EXPECTED_SLICE" ]]
}
if wait_until 90 back; then
  pass "after the kubelet restart the slice was deleted and published again (new uid), $(ms_since "$t") ms after the restart began"
  daemon_log | grep -E "was deleted|registered DRA driver" | tail -3 | sed 's/^/     daemon: /' | cut -c1-200
else
  fail "slices after the kubelet restart: '$(slice_devices)' (uid before $before)"
fi
wait_until 60 ready || fail "the daemon is not Ready again after the kubelet restart: $(readyz)"

# ---- 8. unprepare
# Counted from here: in image mode step 6a replaced the daemon's pod, and its log with it.
unprepares_before=$(daemon_log | grep -c "NodeUnprepareResources")
k delete pod smoke-a smoke-b smoke-c --wait=false >/dev/null 2>&1
t=$(date +%s%N)
unprepared() { (( $(daemon_log | grep -c "NodeUnprepareResources") > unprepares_before )); }
if wait_until 90 unprepared; then
  pass "pods deleted: the kubelet unprepared the claims ($(ms_since "$t") ms)"
  daemon_log | grep "NodeUnprepareResources" | sed 's/^/     daemon: /' | cut -c1-200
else
  fail "no NodeUnprepareResources within 90 s of deleting the pods"
fi
# The kubelet unprepares each claim once its last pod is gone (smoke-shared: both of its pods).
wait_until 90 eval '[[ $(metrics) == *"smarter_device_manager_dra_prepared_claims 0"* ]]'
m=$(metrics)
pid=$(pgrep -f "smarter-device-manager dra" | head -1)
[[ -n $pid ]] && note "daemon memory: $(grep -E '^(VmRSS|VmHWM|Threads)' /proc/"$pid"/status | tr -s ' \t' ' ' | tr '\n' ' ')"
echo "$m" | grep -E "^smarter_device_manager_dra_(prepares|unprepares|slice_writes|api_errors|prepared_claims|slices_deleted)" | sed 's/^/     metric: /'
echo "$m" | grep -q "smarter_device_manager_dra_prepared_claims 0" && pass "no prepared claims left in the checkpoint" ||
  fail "prepared claims left: $(echo "$m" | grep dra_prepared_claims)"
ls /var/run/cdi/$DRIVER-claim_* >/dev/null 2>&1 && fail "claim CDI specs left: $(ls /var/run/cdi/$DRIVER-claim_*)" ||
  pass "no claim-specific CDI specs left in /var/run/cdi"

# ---- 9. pods written for device-plugin mode: resources.limits, no claim (DRAExtendedResource)
k delete resourceclaim smoke-shared --wait=false >/dev/null 2>&1  # frees sdm-smoke0's allocation
class_of() {  # RESOURCE -> the name of the class mapping it
  kubectl get deviceclasses -o jsonpath='{range .items[?(@.spec.extendedResourceName=="'"$1"'")]}{.metadata.name}{end}' 2>/dev/null
}
t=$(date +%s%N)
if wait_until 60 eval '[[ -n $(class_of smarter-devices/ttyUSB0) && -n $(class_of smarter-devices/sdm-share0) ]]'; then
  pass "dra-classes made DeviceClasses $(class_of smarter-devices/ttyUSB0) and $(class_of smarter-devices/sdm-share0) in $(ms_since "$t") ms: $(kubectl get deviceclass "$(class_of smarter-devices/ttyUSB0)" -o jsonpath='{.spec.selectors[0].cel.expression}')"
else
  fail "no DeviceClass maps smarter-devices/ttyUSB0 and smarter-devices/sdm-share0 after 60 s: $(kubectl get deviceclasses -o name | tr '\n' ' ')"
  classes_log | tail -20 | sed 's/^/       /'
fi
note "node allocatable smarter-devices/ttyUSB0 (device plugin): '$(kubectl get node "$NODE" -o jsonpath='{.status.allocatable.smarter-devices/ttyUSB0}')' (empty or 0: DRA serves it)"
legacy_pod() {  # NAME [RESOURCE]: deploy/example-client-pod.yaml, only renamed (and the resource swapped)
  sed -e "s/^  name: smarter-device-client\$/  name: $1/" -e "s#smarter-devices/ttyUSB0: 1#smarter-devices/${2:-ttyUSB0}: 1#" \
    -e "s#ls -l /dev/ttyUSB0#ls -l /dev/${2:-ttyUSB0}#" "$HERE/deploy/example-client-pod.yaml"
}
if [[ -n ${REALK8S_BUSYBOX_IMAGE:-} && $REALK8S_BUSYBOX_IMAGE != busybox:1.36 ]]; then
  note "the example's image busybox:1.36 is replaced by $REALK8S_BUSYBOX_IMAGE (REALK8S_BUSYBOX_IMAGE)"
  legacy_pod() { sed -e "s/^  name: smarter-device-client\$/  name: $1/" -e "s#smarter-devices/ttyUSB0: 1#smarter-devices/${2:-ttyUSB0}: 1#" \
    -e "s#ls -l /dev/ttyUSB0#ls -l /dev/${2:-ttyUSB0}#" -e "s#busybox:1.36#$REALK8S_BUSYBOX_IMAGE#" "$HERE/deploy/example-client-pod.yaml"; }
fi
claim_of() { k get pod "$1" -o jsonpath='{.status.extendedResourceClaimStatus.resourceClaimName}' 2>/dev/null; }
legacy_check() {  # POD DEVICE: Running, the container's log shows the device, the claim the scheduler made
  local line claim alloc
  if wait_until 90 eval '[[ $(phase '"$1"') == Running ]]'; then
    wait_until 10 eval '[[ -n $(k logs '"$1"' 2>/dev/null) ]]'
    line=$(k logs "$1" 2>&1 | head -1)
    claim=$(claim_of "$1")
    alloc=$(k get resourceclaim "$claim" -o jsonpath='{.status.allocation.devices.results[0].pool}/{.status.allocation.devices.results[0].device} {.status.allocation.devices.results[0].shareID}' 2>/dev/null)
    if [[ $line == c*"/dev/$2" && -n $claim ]]; then
      pass "pod $1 (limits smarter-devices/$2: 1, no claim in its spec) is Running: '$line'; claim $claim allocated $alloc"
    else
      fail "pod $1: log '$line', extendedResourceClaimStatus claim '$claim'"
    fi
  else
    fail "pod $1 phase '$(phase "$1")'"
    k describe pod "$1" | tail -8 | sed 's/^/       /'
  fi
}
waits() {  # POD: still Pending 5 s on, the scheduler's reason
  sleep 5
  if [[ $(phase "$1") == Pending ]]; then
    pass "pod $1 waits (Pending): $(k get events --field-selector involvedObject.name="$1" -o jsonpath='{.items[-1].message}' 2>/dev/null | cut -c1-90)"
  else
    fail "pod $1 should wait but is '$(phase "$1")'"
  fi
}
legacy_pod smarter-device-client | k apply -f - >/dev/null || fail "kubectl apply of deploy/example-client-pod.yaml"
legacy_check smarter-device-client ttyUSB0
legacy_pod smarter-device-client-2 | k apply -f - >/dev/null
waits smarter-device-client-2
k delete pod smarter-device-client --wait=false >/dev/null 2>&1
t=$(date +%s%N)
legacy_check smarter-device-client-2 ttyUSB0
note "the second ran $(ms_since "$t") ms after the first was deleted"
k delete pod smarter-device-client-2 --wait=false >/dev/null 2>&1
for p in legacy-s1 legacy-s2 legacy-s3; do legacy_pod "$p" sdm-share0 | k apply -f - >/dev/null; done
lrunning() { local n=0 p; for p in legacy-s1 legacy-s2 legacy-s3; do [[ $(phase $p) == Running ]] && n=$((n + 1)); done; echo $n; }
wait_until 90 eval '[[ $(lrunning) == 2 ]]'
lwaiting=""
for p in legacy-s1 legacy-s2 legacy-s3; do
  if [[ $(phase $p) == Running ]]; then legacy_check "$p" sdm-share0; else lwaiting=$p; fi
done
if [[ $(lrunning) == 2 && -n $lwaiting ]]; then
  waits "$lwaiting"
  gone=$(for p in legacy-s1 legacy-s2 legacy-s3; do [[ $p != "$lwaiting" ]] && echo $p && break; done)
  k delete pod "$gone" --wait=false >/dev/null 2>&1
  legacy_check "$lwaiting" sdm-share0
else
  fail "sdm-share0 by limits: $(lrunning) pods running (want 2 and one waiting)"
fi
k delete pod legacy-s1 legacy-s2 legacy-s3 --wait=false >/dev/null 2>&1
classes_log | grep -E "DeviceClass|extended resources" | sed 's/^/     dra-classes: /' | cut -c1-220

echo "---- daemon log (last 40 lines)"
daemon_log | tail -40 | cut -c1-220 | sed 's/^/     /'
if ((FAILS)); then
  echo "DRA-SMOKE: FAIL ($FAILS failed checks, $(($(ms_since "$T0") / 1000)) s)"
  exit 1
fi
echo "DRA-SMOKE: PASS ($(($(ms_since "$T0") / 1000)) s)"
