#!/usr/bin/env bash
# A container as a CNI runtime makes one, on a host provisioned by provision.sh:
# a network namespace plus the weft plugin exec'd with the conflist's first
# plugin config (name and cniVersion injected, as libcni does).
#
#   cni-container.sh add NAME     # prints the container's address (10.244.x.y/24)
#   cni-container.sh del NAME
#
# Settings: CNI_CONF [/etc/cni/net.d/10-weft.conflist], CNI_BIN [/opt/cni/bin]
set -euo pipefail

action=${1:?add|del NAME}
name=${2:?add|del NAME}
conf_file=${CNI_CONF:-/etc/cni/net.d/10-weft.conflist}
bin=${CNI_BIN:-/opt/cni/bin}

net_conf() {
    python3 - "$conf_file" <<'EOF'
import json, sys
conflist = json.load(open(sys.argv[1]))
plugin = dict(conflist["plugins"][0], name=conflist["name"], cniVersion=conflist["cniVersion"])
print(json.dumps(plugin))
EOF
}

cni() {
    CNI_COMMAND=$1 CNI_CONTAINERID=$name CNI_NETNS=/run/netns/$name CNI_IFNAME=eth0 \
        CNI_PATH=$bin:/usr/lib/cni "$bin/weft" <<<"$(net_conf)"
}

case $action in
    add)
        ip netns add "$name"
        cni ADD >/dev/null
        ip -n "$name" -4 -o addr show dev eth0 | awk '{print $4}'
        ;;
    del)
        cni DEL >/dev/null || true
        ip netns del "$name"
        ;;
    *) echo "cni-container.sh: unknown action $action (add|del)" >&2; exit 2 ;;
esac
