# shellcheck shell=bash
# Shared by qemu-cluster.sh and vagrant-cluster.sh (sourced; the caller defines log):
# the root-namespace check their `test` makes around a VM run.

root_snapshot() {  # what must not change in the root namespace
    {
        echo "== link"; ip -o link show | awk '{print $2, $3}'
        echo "== addr"; ip -o addr show | awk '{print $2, $3, $4}'
        echo "== route"; ip route show table all
        echo "== route6"; ip -6 route show table all
        echo "== nft"; nft list ruleset 2>/dev/null
    }
}

# root_unchanged BEFORE AFTER: two root_snapshot outputs; says whether they match and
# returns 1 (the difference on stderr) when they do not
root_unchanged() {
    if [[ $1 != "$2" ]]; then
        log "FAIL: the root namespace changed:"
        diff <(echo "$1") <(echo "$2") >&2 || true
        return 1
    fi
    log "ok: root namespace links, addresses, routes and nft ruleset unchanged"
}
