# Shell helpers the real-cluster scripts share (dra-smoke.sh, dra-rollout.sh); sourced, not run.
# The caller sets FAILS=0 first.

pass() { echo "PASS $*"; }
fail() { echo "FAIL $*"; FAILS=$((FAILS + 1)); }
note() { echo "     $*"; }
wait_until() {  # SECONDS COMMAND...: until COMMAND succeeds, polling every 0.2 s; 1 on timeout
  local end=$(($(date +%s) + $1))
  shift
  until "$@"; do
    (($(date +%s) < end)) || return 1
    sleep 0.2
  done
}
claim_pods() {  # NAMESPACE: the pods that hold claims: their own (spec.resourceClaims), or the one
  # the scheduler made for their extended resources (status.extendedResourceClaimStatus, 1.36)
  kubectl -n "$1" get pods -o jsonpath='{range .items[?(@.spec.resourceClaims)]}{.metadata.name}{" "}{end}{range .items[?(@.status.extendedResourceClaimStatus)]}{.metadata.name}{" "}{end}' 2>/dev/null
}
claim_pods_gone() {  # NAMESPACE...: delete the pods that hold claims and wait until they are gone
  # Before the driver goes: the kubelet unprepares a pod's claims before the pod is removed, and a
  # pod whose DRA driver was deleted first stays Terminating for ever (and its namespace with it).
  local ns pods
  for ns in "$@"; do
    pods=$(claim_pods "$ns")
    # shellcheck disable=SC2086
    [[ -n $pods ]] && kubectl -n "$ns" delete pods $pods --wait=false >/dev/null 2>&1
  done
  for ns in "$@"; do
    wait_until 120 eval '[[ -z $(claim_pods "$ns") ]]' ||
      echo "NOTE pods with claims still in $ns after 120 s: $(claim_pods "$ns")"
  done
}
