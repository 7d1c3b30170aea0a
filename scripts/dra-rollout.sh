#!/usr/bin/env bash
# dra-rollout.sh — issue 18 part 4 on a real cluster: `kubectl rollout restart` of the DRA
# DaemonSet while claims are prepared and unprepared loses nothing. Run it ON A NODE, as root,
# with kubectl pointing at the cluster (cluster-admin); the kubelet must be >= 1.33 (several
# registrations of one driver) and the image must contain this branch:
#
#   SDM_ROLLOUT_IMAGE=localhost/smarter-device-manager:dra scripts/dra-rollout.sh
#
# What it does, one PASS/FAIL line per check and DRA-ROLLOUT: PASS|FAIL at the end (exit 0 only
# if every check passed). The benchmark is the first check of step 5: 0 failed prepares.
#   1. makes test devices /dev/sdm-roll0..3 (char 1:3, copies of /dev/null; nummaxdevices 1) and
#      deploys the chart (dra.enabled=true, this node only: maxSurge 1, maxUnavailable 0, the pod
#      UID in the socket names); notes the slice's metadata.uid and checks its ownerReference
#      (the Node: apiVersion v1, kind Node, name, uid);
#   2. starts $WORKERS loops, each creating a pod with a claim from a ResourceClaimTemplate,
#      waiting until it runs, deleting it, again; every daemon pod's log is followed into a file
#      (an old pod's log is gone once it is deleted);
#   3. $ROLLOUTS times: `kubectl rollout restart`, `kubectl rollout status`; checks that the new
#      pod ran beside the old one (two daemon pods seen at once) and the slice's metadata.uid is
#      unchanged (never deleted and made again);
#   4. stops the loops, deletes what is left, waits until every claim is unprepared;
#   5. counts FailedPrepareDynamicResources events in the namespace (must be 0); checks claims
#      prepared by one daemon pod were unprepared by another (from the followed logs), pods that
#      never ran (none may stay Pending), and that the checkpoint and the CDI dir hold none of the
#      test's claims;
#   6. adminAccess both ways: a namespace labelled resource.kubernetes.io/admin-access=true; a pod
#      holds /dev/sdm-roll0 through a normal claim; a monitoring pod with an adminAccess claim on
#      the same device runs beside it; a second normal claim on it waits (not allocated);
#   7. cleans up everything it made.
#
# Environment:
#   SDM_ROLLOUT_IMAGE      image to deploy (default localhost/smarter-device-manager:dra, pull Never)
#   SDM_ROLLOUT_NAMESPACE  namespace (default sdm-dra-rollout; the admin one is <it>-admin)
#   SDM_ROLLOUT_API_SERVER host:port for the daemon's pod; default: the kubernetes Service's
#                          endpoint when the cluster has no kube-proxy (as dra-smoke.sh)
#   SDM_ROLLOUT_COUNT      rollouts (default 3); SDM_ROLLOUT_WORKERS claim-pod loops (default 3)
#   SDM_ROLLOUT_PYTHON     a python with this project's test extra (renders the chart when `helm`
#                          is missing; default .venv/bin/python)
set -uo pipefail
HERE=$(cd "$(dirname "$0")/.." && pwd)
NS=${SDM_ROLLOUT_NAMESPACE:-sdm-dra-rollout}
ADMIN_NS=$NS-admin
IMAGE=${SDM_ROLLOUT_IMAGE:-localhost/smarter-device-manager:dra}
PY=${SDM_ROLLOUT_PYTHON:-$HERE/.venv/bin/python}
ROLLOUTS=${SDM_ROLLOUT_COUNT:-3}
WORKERS=${SDM_ROLLOUT_WORKERS:-3}
BUSYBOX=${REALK8S_BUSYBOX_IMAGE:-busybox:1.36}
DRIVER=smarter-devices.io
DS=sdm-roll-dra
LABEL=app.kubernetes.io/name=smarter-device-manager-dra
STATE=/var/lib/kubelet/plugins/$DRIVER
# The node this runs on (it makes the test devices here): its hostname, or SDM_NODE where the
# node's name is not its hostname. Never "the first node": other nodes may come and go.
NODE=${SDM_NODE:-$(hostname)}
kubectl get node "$NODE" >/dev/null 2>&1 ||
  { echo "no node $NODE in the cluster: run this on a node, or set SDM_NODE to this node's name" >&2; exit 2; }
[[ -n ${SDM_ROLLOUT_NODE:-} ]] && NODE=$SDM_ROLLOUT_NODE
TMP=$(mktemp -d)
FAILS=0
PIDS=()
# shellcheck source=scripts/lib-cluster.sh
source "$HERE/scripts/lib-cluster.sh"  # pass, fail, note, wait_until, claim_pods_gone
k() { kubectl -n "$NS" "$@"; }
slice_uids() {
  kubectl get resourceslices --field-selector "spec.nodeName=$NODE,spec.driver=$DRIVER" \
    -o jsonpath='{range .items[*]}{.metadata.name}={.metadata.uid}{" "}{end}' 2>/dev/null
}
daemon_pods() { k get pods -l "$LABEL" -o jsonpath='{range .items[*]}{.metadata.name}{" "}{end}' 2>/dev/null; }
cleanup() {
  touch "$TMP/stop"
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null; done
  wait 2>/dev/null
  claim_pods_gone "$ADMIN_NS" "$NS"
  kubectl delete ns "$ADMIN_NS" --ignore-not-found --wait=false >/dev/null 2>&1
  kubectl delete ns "$NS" --ignore-not-found --wait=false >/dev/null 2>&1
  if [[ -f $TMP/objects.yaml ]]; then kubectl delete -f "$TMP/objects.yaml" --ignore-not-found >/dev/null 2>&1; fi
  kubectl delete resourceslices --field-selector "spec.nodeName=$NODE,spec.driver=$DRIVER" >/dev/null 2>&1
  rm -f /dev/sdm-roll0 /dev/sdm-roll1 /dev/sdm-roll2 /dev/sdm-roll3 "/var/run/cdi/$DRIVER-device.json"
  rm -rf "$TMP"
}
trap cleanup EXIT

kubectl get --raw /apis/resource.k8s.io/v1 2>/dev/null | grep -q '"resourceslices"' ||
  { echo "FAIL resource.k8s.io/v1 is not served (DRA needs Kubernetes >= 1.34)"; echo "DRA-ROLLOUT: FAIL"; exit 1; }
[[ $(id -u) == 0 ]] || { echo "FAIL run as root on the node (it makes device nodes in /dev)"; exit 1; }
KUBELET=$(kubectl get node "$NODE" -o jsonpath='{.status.nodeInfo.kubeletVersion}')
pass "node $NODE, kubelet $KUBELET; $ROLLOUTS rollouts, $WORKERS claim-pod loops"

# ---- 1. devices, the daemon, the slice
for i in 0 1 2 3; do rm -f "/dev/sdm-roll$i"; mknod -m 0666 "/dev/sdm-roll$i" c 1 3; done
wait_until 120 eval '[[ -z $(kubectl get ns "$NS" "$ADMIN_NS" -o name 2>/dev/null) ]]' ||
  fail "namespaces $NS/$ADMIN_NS still there from an earlier run"
kubectl create namespace "$NS" >/dev/null
kubectl label namespace "$NS" pod-security.kubernetes.io/enforce=privileged --overwrite >/dev/null
API=${SDM_ROLLOUT_API_SERVER:-}
if [[ -z $API ]] && ! kubectl -n kube-system get ds kube-proxy >/dev/null 2>&1; then
  API=$(kubectl get endpoints kubernetes -o jsonpath='{.subsets[0].addresses[0].ip}:{.subsets[0].ports[0].port}')
fi
VALUES=$("$PY" -c '
import json, sys
node, image, api = sys.argv[1:]
dra = {"enabled": True, "extendedResources": {"enabled": False}}
if api:
    dra["apiServer"] = {"host": api.rsplit(":", 1)[0], "port": int(api.rsplit(":", 1)[1])}
print(json.dumps({"fullnameOverride": "sdm-roll", "logLevel": "info",
                  "config": [{"devicematch": "^sdm-roll[0-9]$", "nummaxdevices": 1}],
                  "nodeSelector": {"smarter-device-manager": None, "kubernetes.io/hostname": node},
                  "image": {"repository": image.rsplit(":", 1)[0], "tag": image.rsplit(":", 1)[1],
                            "pullPolicy": "Never"}, "dra": dra}))' "$NODE" "$IMAGE" "$API")
"$PY" - "$HERE/charts/smarter-device-manager" "$NS" "$VALUES" >"$TMP/objects.yaml" <<'EOF'
import json, sys
import helm_python as helm
import yaml
with helm.Chart.load(sys.argv[1]) as chart:
    out = chart.render(json.loads(sys.argv[3]), name="sdm-roll", namespace=sys.argv[2])
docs = [d for path, text in sorted(out.items()) if not path.endswith(".txt") for d in yaml.safe_load_all(text) if d]
# DRA mode replaces the device-plugin DaemonSet: leave that one out.
print(yaml.safe_dump_all([d for d in docs if not (d["kind"] == "DaemonSet" and not d["metadata"]["name"].endswith("-dra"))]))
EOF
kubectl apply -f "$TMP/objects.yaml" >"$TMP/apply.log" 2>&1 || fail "kubectl apply of the chart: $(cat "$TMP/apply.log")"
k rollout status "ds/$DS" --timeout=180s >/dev/null || fail "the DaemonSet did not become ready"
wait_until 60 eval '[[ -n $(slice_uids) ]]' || fail "no ResourceSlice of $NODE"
SLICES=$(slice_uids)
OWNER=$(kubectl get resourceslices --field-selector "spec.nodeName=$NODE,spec.driver=$DRIVER" \
  -o jsonpath='{.items[0].metadata.ownerReferences[0].kind}/{.items[0].metadata.ownerReferences[0].name}/{.items[0].metadata.ownerReferences[0].uid}')
NODE_UID=$(kubectl get node "$NODE" -o jsonpath='{.metadata.uid}')
[[ $OWNER == "Node/$NODE/$NODE_UID" ]] && pass "slices $SLICES owned by Node $NODE ($NODE_UID)" ||
  fail "slice owner '$OWNER', want Node/$NODE/$NODE_UID"

# ---- 2. claim-pod loops and the daemon logs
cat <<EOF | kubectl apply -f - >/dev/null || fail "kubectl apply of the claim template"
apiVersion: resource.k8s.io/v1
kind: ResourceClaimTemplate
metadata: {name: roll, namespace: $NS}
spec:
  spec:
    devices:
      requests:
      - name: dev
        exactly: {deviceClassName: $DRIVER}
EOF
follow_logs() {  # one `kubectl logs -f` per daemon pod, into $TMP/log-<pod>
  while [[ ! -e $TMP/stop ]]; do
    for p in $(daemon_pods); do
      [[ -e $TMP/following-$p ]] && continue
      touch "$TMP/following-$p"
      k logs -f "$p" >"$TMP/log-$p" 2>/dev/null &
    done
    sleep 0.5
  done
}
loop() {  # WORKER: create a claim pod, wait until it runs, delete it, again
  local n=0 pod t
  while [[ ! -e $TMP/stop ]]; do
    n=$((n + 1)); pod=roll-$1-$n
    cat <<EOF | k apply -f - >/dev/null
apiVersion: v1
kind: Pod
metadata: {name: $pod}
spec:
  nodeSelector: {kubernetes.io/hostname: $NODE}  # not nodeName: the scheduler allocates claims
  terminationGracePeriodSeconds: 1
  restartPolicy: Never
  resourceClaims: [{name: dev, resourceClaimTemplateName: roll}]
  containers:
  - name: c
    image: $BUSYBOX
    imagePullPolicy: IfNotPresent
    command: ["sh", "-c", "ls -l /dev/sdm-roll*; sleep 3600"]
    resources: {claims: [{name: dev}]}
EOF
    t=$(date +%s)
    if wait_until 120 eval "[[ \$(k get pod $pod -o jsonpath='{.status.phase}' 2>/dev/null) == Running ]]"; then
      echo "$pod ran $(($(date +%s) - t))" >>"$TMP/ran"
    else
      echo "$pod $(k get pod "$pod" -o jsonpath='{.status.phase}')" >>"$TMP/stuck"
    fi
    k delete pod "$pod" --wait=true --timeout=120s >/dev/null 2>&1
  done
}
follow_logs & PIDS+=($!)
for w in $(seq 1 "$WORKERS"); do loop "$w" & PIDS+=($!); done

# ---- 3. rollouts
for r in $(seq 1 "$ROLLOUTS"); do
  sleep 20  # claims being prepared and unprepared before each restart
  before=$(daemon_pods)
  k rollout restart "ds/$DS" >/dev/null
  most=0
  end=$(($(date +%s) + 300))
  until k rollout status "ds/$DS" --timeout=1s >/dev/null 2>&1; do
    n=$(k get pods -l "$LABEL" --field-selector=status.phase=Running -o name 2>/dev/null | wc -l)
    ((n > most)) && most=$n
    (($(date +%s) < end)) || break
  done
  after=$(daemon_pods)
  if k rollout status "ds/$DS" --timeout=1s >/dev/null 2>&1; then
    pass "rollout $r: $before-> $after(at most $most daemon pods running at once)"
  else
    fail "rollout $r did not finish in 300 s: $(k get pods -l "$LABEL" -o wide)"
  fi
  ((most >= 2)) || fail "rollout $r: never saw the new pod beside the old one (maxSurge)"
  [[ $(slice_uids) == "$SLICES" ]] && pass "rollout $r: slice uid unchanged ($SLICES)" ||
    fail "rollout $r: slices were '$SLICES', now '$(slice_uids)' (deleted and made again)"
done
sleep 20

# ---- 4. stop the loops
touch "$TMP/stop"
for pid in "${PIDS[@]:1}"; do wait "$pid" 2>/dev/null; done
k delete pods -l '!app.kubernetes.io/name' --wait=true --timeout=120s >/dev/null 2>&1
test_claims() {  # claims of $NS in the checkpoint (one number, also when there are none)
  [[ -f $STATE/checkpoint.json ]] || { echo 0; return; }
  { grep -o "\"namespace\":\"$NS\"" "$STATE/checkpoint.json" || true; } | wc -l
}
wait_until 120 eval '[[ $(test_claims) == 0 ]]' || fail "the checkpoint still holds $(test_claims) claims of $NS"

# ---- 5. the verdict
ran=$(wc -l <"$TMP/ran" 2>/dev/null || echo 0)
FAILED=$(k get events --field-selector reason=FailedPrepareDynamicResources -o name 2>/dev/null | wc -l)
if ((FAILED == 0)); then
  pass "BENCHMARK: 0 failed prepares (FailedPrepareDynamicResources) in $ROLLOUTS rollouts; $ran claim pods ran"
else
  fail "BENCHMARK: $FAILED FailedPrepareDynamicResources events in $ROLLOUTS rollouts ($ran claim pods ran):"
  k get events --field-selector reason=FailedPrepareDynamicResources -o custom-columns=POD:.involvedObject.name,MSG:.message --no-headers | head -10 | sed 's/^/       /'
fi
[[ -s $TMP/stuck ]] && fail "claim pods that never ran: $(tr '\n' ';' <"$TMP/stuck")" || pass "every claim pod ran"
"$PY" - "$TMP" "$NS" <<'EOF' >"$TMP/cross" || true
import glob, os, re, sys
tmp, ns = sys.argv[1:]
prepared, unprepared = {}, {}
for path in glob.glob(os.path.join(tmp, "log-*")):
    pod = os.path.basename(path)[4:]
    for line in open(path, errors="replace"):
        m = re.search(r"Node(Un)?[Pp]repareResources " + re.escape(ns) + r"/\S+ \(uid ([0-9a-f-]+)\)", line)
        if m:
            (unprepared if m.group(1) else prepared).setdefault(m.group(2), set()).add(pod)
cross = [u for u, pods in unprepared.items() if u in prepared and not pods & prepared[u]]
print(len(prepared), len(unprepared), len(cross))
EOF
read -r n_prep n_unprep n_cross <"$TMP/cross"
if [[ ${n_cross:-0} -gt 0 ]]; then
  pass "$n_cross of $n_unprep claims were unprepared by another daemon pod than the one that prepared them ($n_prep prepared)"
else
  fail "no claim prepared by one daemon pod was unprepared by another (prepared ${n_prep:-?}, unprepared ${n_unprep:-?})"
fi
left=$(ls /var/run/cdi/ 2>/dev/null | grep -c "^$DRIVER-claim_" || true)
((left == 0)) && pass "no claim CDI spec left in /var/run/cdi" || fail "$left claim CDI specs left in /var/run/cdi"

# ---- 6. adminAccess both ways
kubectl create namespace "$ADMIN_NS" >/dev/null
kubectl label namespace "$ADMIN_NS" resource.kubernetes.io/admin-access=true pod-security.kubernetes.io/enforce=privileged --overwrite >/dev/null
claim() {  # NAMESPACE NAME ADMIN
  cat <<EOF
apiVersion: resource.k8s.io/v1
kind: ResourceClaim
metadata: {name: $2, namespace: $1}
spec:
  devices:
    requests:
    - name: dev
      exactly:
        deviceClassName: $DRIVER
        adminAccess: $3
        selectors: [{cel: {expression: 'device.attributes["$DRIVER"].path == "/dev/sdm-roll0"'}}]
---
apiVersion: v1
kind: Pod
metadata: {name: $2, namespace: $1}
spec:
  nodeSelector: {kubernetes.io/hostname: $NODE}  # not nodeName: the scheduler allocates claims
  terminationGracePeriodSeconds: 1
  resourceClaims: [{name: dev, resourceClaimName: $2}]
  containers:
  - {name: c, image: $BUSYBOX, imagePullPolicy: IfNotPresent, command: [sleep, "3600"], resources: {claims: [{name: dev}]}}
EOF
}
phase() { kubectl -n "$1" get pod "$2" -o jsonpath='{.status.phase}' 2>/dev/null; }
claim "$NS" holder false | kubectl apply -f - >/dev/null
wait_until 120 eval '[[ $(phase $NS holder) == Running ]]' || fail "the holder pod does not run"
claim "$ADMIN_NS" monitor true | kubectl apply -f - >/dev/null
if wait_until 120 eval '[[ $(phase $ADMIN_NS monitor) == Running ]]'; then
  pass "adminAccess: the monitoring pod runs with /dev/sdm-roll0 while the holder has it"
else
  fail "adminAccess: the monitoring pod is $(phase "$ADMIN_NS" monitor): $(kubectl -n "$ADMIN_NS" get events --no-headers | tail -3)"
fi
claim "$NS" second false | kubectl apply -f - >/dev/null
sleep 20
if [[ $(phase "$NS" second) == Pending ]]; then
  pass "a second normal claim on /dev/sdm-roll0 waits (Pending) while the holder has it"
else
  fail "a second normal claim on a held device is $(phase "$NS" second)"
fi

if ((FAILS == 0)); then echo "DRA-ROLLOUT: PASS"; exit 0; fi
echo "DRA-ROLLOUT: FAIL ($FAILS)"
exit 1
