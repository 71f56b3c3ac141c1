#!/usr/bin/env bash
# shellcheck disable=SC2016  # single-quoted scripts run in the guest and expand there
# The checks `qemu-cluster.sh test` runs on three provisioned VMs (vm1..vm3), under
# systemd as PID 1. RUNNER is a command with two verbs:
#   RUNNER exec VM -- ARGV...   run ARGV as root in VM (prints output, returns its rc)
#   RUNNER poweroff VM          cut VM's power
# so the same checks can drive any way of running the VMs.
#
#   vm-checks.sh RUNNER
#
# Settings: WEFT_VM_LEASE_TTL (flanneld's -subnet-lease-ttl in the VMs) [30]
#           WEFT_VM_UNDERLAY: the VMs' /24, vmN at .1N [198.18.0]; WEFT_VM_DEV: its NIC [eth0]
#           WEFT_VM_ONLY: a regex; run only the checks whose names match it (and the
#           containers, which the others use) -- to rerun some on a running cluster
#           WEFT_VM_LOGS: a directory; the restart-under-flood check keeps its timestamped
#           ping output, the restart window and vm1/vm2's flanneld journals there
# Exit status: 0 when every check passed; prints "N passed, N failed" last.
set -uo pipefail

RUNNER=${1:?usage: vm-checks.sh RUNNER}
TTL=${WEFT_VM_LEASE_TTL:-30}
UNDERLAY=${WEFT_VM_UNDERLAY:-198.18.0}
DEV=${WEFT_VM_DEV:-eth0}
NODES=3
DOMAIN=skydns.local
passed=0
failed=0
failures=()

x() {  # x VM ARGV...
    local vm=$1
    shift
    "$RUNNER" exec "$vm" -- "$@"
}
xs() {  # xs VM SCRIPT: a bash script in VM
    x "$1" bash -c "$2"
}
say() { printf '[vm-checks %s] %s\n' "$(date +%T)" "$*"; }

check() {  # check NAME CMD...: run CMD (a function), count and show the result
    local name=$1 out rc t0=$SECONDS
    shift
    if [[ -n ${WEFT_VM_ONLY:-} && ! $name =~ $WEFT_VM_ONLY && $name != containers* ]]; then
        return 0
    fi
    "$@" >"$TMP/check.out" 2>&1  # not in a subshell: checks may set variables
    rc=$?
    out=$(<"$TMP/check.out")
    if ((rc == 0)); then
        passed=$((passed + 1))
        say "ok   $name ($((SECONDS - t0))s)${out:+: $(tail -1 <<<"$out")}"
    else
        failed=$((failed + 1))
        failures+=("$name")
        say "FAIL $name ($((SECONDS - t0))s, rc=$rc)"
        tail -25 <<<"$out" | sed 's/^/       /'
    fi
    return 0
}

retry() {  # retry SECONDS CMD...: until CMD succeeds; the last attempt's output
    local deadline=$((SECONDS + $1)) out
    shift
    while true; do
        if out=$("$@" 2>&1); then
            [[ -n $out ]] && echo "$out"
            return 0
        fi
        if ((SECONDS >= deadline)); then
            echo "$out"
            return 1
        fi
        sleep 2
    done
}

ENDPOINTS='$(sed -n "s/^FLANNELD_ETCD_ENDPOINTS=//p" /etc/weft/flanneld.env)'
subnet_of() { xs "$1" 'sed -n "s/^FLANNEL_SUBNET=//p" /run/flannel/subnet.env'; }

# -- the checks ---------------------------------------------------------------------

system_running() {  # running, or degraded only through units that are not weft's
    local vm=$1 state failed_units
    state=$(x "$vm" systemctl is-system-running)
    failed_units=$(x "$vm" systemctl list-units --failed --plain --no-legend | awk '{print $1}')
    echo "$vm: $state${failed_units:+ (failed: $(tr "\n" " " <<<"$failed_units"))}"
    case $state in
        running) return 0 ;;
        degraded) ! grep -E 'etcd|flanneld|dnsd|weft' <<<"$failed_units" ;;
        *) return 1 ;;
    esac
}

units_active() {
    x "$1" systemctl is-active flanneld dnsd "${@:2}"
}

ready_after_lease() {  # Type=notify, and ActiveEnterTimestamp after subnet.env was written
    xs "$1" '
        type=$(systemctl show -P Type flanneld)
        [[ $type == notify ]] || { echo "flanneld Type=$type, not notify"; exit 1; }
        active=$(busctl get-property org.freedesktop.systemd1 /org/freedesktop/systemd1/unit/flanneld_2eservice org.freedesktop.systemd1.Unit ActiveEnterTimestamp | cut -d" " -f2)
        written=$(( $(stat -c %Y /run/flannel/subnet.env) * 1000000 + 10#$(stat -c %y /run/flannel/subnet.env | sed "s/.*\.\([0-9]\{6\}\).*/\1/") ))
        echo "subnet.env written at $written us, active at $active us (+$(( (active - written) / 1000 )) ms)"
        (( active >= written ))'
}

has_capability() {  # has_capability VM UNIT CAPNUM CAPNAME: the main process has it in CapEff
    xs "$1" "pid=\$(systemctl show -P MainPID $2); eff=\$(awk '/^CapEff/ {print \$2}' /proc/\$pid/status)
        echo \"$2 pid \$pid uid \$(awk '/^Uid/ {print \$2}' /proc/\$pid/status) CapEff \$eff\"
        (( 0x\$eff & (1 << $3) )) || { echo '$2 lacks $4'; exit 1; }"
}

declare -A CIP=()
add_containers() {
    local i ip
    for ((i = 1; i <= NODES; i++)); do
        if x "vm$i" ip netns pids "c$i" >/dev/null 2>&1; then  # made by an earlier run
            ip=$(x "vm$i" ip -n "c$i" -4 -o addr show dev eth0 | awk '{print $4}')
        else
            ip=$(x "vm$i" bash /weft/vagrant/cni-container.sh add "c$i") || { echo "$ip"; return 1; }
        fi
        CIP[$i]=${ip%/*}
        echo "c$i on vm$i: $ip"
    done
}

ping_from() {  # ping_from I J: container cI on vmI pings container cJ
    x "vm$1" ip netns exec "c$1" ping -n -c 3 -i 0.3 -W 3 "${CIP[$2]}"
}

ping_matrix() {
    local i j
    for ((i = 1; i <= NODES; i++)); do
        for ((j = 1; j <= NODES; j++)); do
            ((i == j)) && continue
            retry 60 ping_from "$i" "$j" >/dev/null || { ping_from "$i" "$j"; return 1; }
        done
    done
    echo "every container pings every other ($(x vm1 ip -o route show | grep -c '^10\.244') overlay routes on vm1)"
}

dns_across() {  # a name registered on vm1 resolves from a container on vm3
    x vm1 bash -c "weftctl dns set c1.weft.$DOMAIN --host ${CIP[1]} -etcd-endpoints $ENDPOINTS" ||
        return 1
    local got
    got=$(retry 30 x vm3 bash -c "out=\$(ip netns exec c3 dig @$UNDERLAY.13 c1.weft.$DOMAIN A +short +time=3 +tries=2) && [[ \$out == ${CIP[1]} ]] && echo \$out")
    echo "c1.weft.$DOMAIN from c3 on vm3: $got"
    [[ $got == "${CIP[1]}" ]]
}

lost_probes() {  # ping -D -O output on stdin: the probes never answered and the ICMP errors,
    # as runs of "first..last seq (time of the first miss .. of the last)"
    awk '/ bytes from /  {split($0, a, "icmp_seq="); split(a[2], b, " "); ok[b[1]] = 1; next}
         /no answer yet/ {seq = $NF; sub(/.*=/, "", seq); miss[seq] = substr($1, 2, length($1) - 2); next}
         /^\[[0-9.]+\] From / {print "icmp error: " $0}
         END {
             for (s = 1; s <= 100000; s++) {
                 if ((s in miss) && !(s in ok)) {
                     if (!run) {first = s; t0 = miss[s]; run = 1}
                     last = s; t1 = miss[s]; n++
                 } else if (run && s > last) {
                     printf "lost seq %d..%d (%d) at %s .. %s\n", first, last, last - first + 1, t0, t1
                     run = 0
                 }
             }
             printf "%d probes never answered\n", n
         }'
}

restart_under_flood() {  # restart flanneld on vm2 while c1 floods c2: no loss, same subnet
    # -D -O: every unanswered probe and ICMP error is printed with its time, so a loss can be
    # laid against the restart window and the journals (kept in $WEFT_VM_LOGS when set)
    local before after ping_out pid window vm
    before=$(subnet_of vm2)
    x vm1 ip netns exec c1 ping -D -O -n -i 0.01 -c 3000 -W 2 "${CIP[2]}" >"$TMP/flood" 2>&1 &
    pid=$!
    sleep 5
    window=$(xs vm2 'date +%s.%N; systemctl restart flanneld; date +%s.%N') || return 1
    x vm2 systemctl is-active flanneld || return 1
    wait "$pid"
    ping_out=$(grep -v ' bytes from ' "$TMP/flood")
    after=$(subnet_of vm2)
    if [[ -n ${WEFT_VM_LOGS:-} ]]; then
        mkdir -p "$WEFT_VM_LOGS"
        cp "$TMP/flood" "$WEFT_VM_LOGS/restart-flood.txt"
        echo "$window" >"$WEFT_VM_LOGS/restart-window.txt"
        for vm in vm1 vm2; do
            x "$vm" journalctl -u flanneld -o short-precise --no-pager --since=-3min \
                >"$WEFT_VM_LOGS/restart-flanneld-$vm.txt"
        done
    fi
    echo "restart (vm2 clock): $(paste -sd' ' <<<"$window" | awk '{printf "%.3f .. %.3f", $1, $2}')"
    lost_probes <"$TMP/flood"
    if ! grep -q ' 0% packet loss' <<<"$ping_out"; then  # what the daemons said meanwhile
        for vm in vm1 vm2; do
            x "$vm" journalctl -u flanneld -p warning -o short-precise --no-pager \
                --since="@$((${window%%.*} - 5))" | sed "s/^/$vm: /" | tail -5
        done
    fi
    echo "$ping_out" | tail -2
    echo "vm2 subnet before $before, after $after"
    [[ $before == "$after" && -n $before ]] && grep -q ' 0% packet loss' <<<"$ping_out"
}

killed_and_restarted() {  # SIGKILL: Restart= brings it back, same subnet, data path works
    local old new before
    before=$(subnet_of vm2)
    old=$(x vm2 systemctl show -P MainPID flanneld)
    x vm2 systemctl kill -s KILL flanneld || return 1
    retry 120 xs vm2 "[[ \$(systemctl is-active flanneld) == active ]] && (( \$(systemctl show -P MainPID flanneld) != $old ))" ||
        return 1
    new=$(x vm2 systemctl show -P MainPID flanneld)
    echo "flanneld pid $old killed, now $new (NRestarts=$(x vm2 systemctl show -P NRestarts flanneld)), subnet $(subnet_of vm2)"
    [[ $(subnet_of vm2) == "$before" ]] && retry 30 ping_from 1 2 >/dev/null
}

journal_priorities() {  # flanneld's INFO lines at priority 6; WARNING/ERROR lines at 4/3, and the
    # error every flanneld logs before `weftctl network set` ("no network config") below 6
    x "$1" bash -c 'journalctl -u flanneld -o json --no-pager | python3 -c "
import json, sys
info = bad = 0
levels = {}
for line in sys.stdin:
    e = json.loads(line)
    m, p = e.get(\"MESSAGE\"), int(e.get(\"PRIORITY\", 6))
    if not isinstance(m, str) or e.get(\"_PID\") == \"1\" or e.get(\"SYSLOG_IDENTIFIER\") == \"systemd\":
        continue
    head = m.split()[:4]  # the level word: after a timestamp, or first
    levels[p] = levels.get(p, 0) + 1
    if \"no network config\" in m and p > 4:
        bad += 1
        print(f\"priority {p} for: {m}\")
    info += p == 6 and \"DEBUG\" not in head
    for word, worst in ((\"WARNING\", 4), (\"ERROR\", 3), (\"CRITICAL\", 2)):
        if word in head and p > worst:
            bad += 1
            print(f\"priority {p} for: {m}\")
print(f\"{info} INFO lines at priority 6, {bad} warnings/errors at a wrong priority; entries by priority {dict(sorted(levels.items()))}\")
sys.exit(0 if info and not bad else 1)
"'
}

switch_backend() {  # switch_backend TYPE: the operator's way (flanneld reads it at start)
    local i
    for ((i = 1; i <= NODES; i++)); do x "vm$i" systemctl stop flanneld; done
    # --force: the leases are still live (flanneld stopped, TTL not run out) and say vxlan
    x vm1 bash -c "weftctl network set --force --network 10.244.0.0/16 --backend $1 -etcd-endpoints $ENDPOINTS" ||
        return 1
    for ((i = 1; i <= NODES; i++)); do
        xs "vm$i" 'for l in /sys/class/net/flannel.*; do [[ -e $l ]] && ip link del "${l##*/}"; done; systemctl start flanneld' ||
            return 1
    done
    x vm1 bash -c "weftctl leases -etcd-endpoints $ENDPOINTS"
}

host_gw_routes() {  # vm1 routes vm2's subnet via vm2's underlay address
    local s2
    s2=$(subnet_of vm2)
    retry 60 xs vm1 "ip route show ${s2%.*}.0/24 | grep 'via $UNDERLAY.12 dev $DEV'"
}

podman_runs() {  # podman 4.3 (network_backend = cni) runs a busybox rootfs on weft's network
    local i j
    for ((i = 1; i <= NODES; i++)); do
        j=$((i % NODES + 1))
        xs "vm$i" "set -e
            mkdir -p /etc/containers/containers.conf.d
            printf '[network]\nnetwork_backend = \"cni\"\ncni_plugin_dirs = [\"/opt/cni/bin\", \"/usr/lib/cni\"]\nnetwork_config_dir = \"/etc/cni/net.d\"\n' \
                >/etc/containers/containers.conf.d/weft.conf
            r=/var/lib/weft-busybox
            mkdir -p \$r/bin \$r/etc \$r/proc \$r/sys \$r/dev \$r/tmp \$r/run
            cp /bin/busybox \$r/bin/busybox
            ln -sf busybox \$r/bin/sh
            podman network ls --format '{{.Name}} {{.Driver}}' | grep -w weft
            podman run --rm --network weft --cap-add NET_RAW --rootfs \$r /bin/busybox sh -c \
                'ip -4 -o addr show eth0; ping -c 3 -W 5 ${CIP[$j]}'" || return 1
        echo "vm$i: podman's container pinged c$j on vm$j"
    done
}

POWEROFF_AT=$SECONDS
poweroff_vm2() {  # its lease expires; vm1 and vm3 drop its route
    local s2 t0=$SECONDS
    s2=$(subnet_of vm2)
    s2=${s2%.*}.0/24
    "$RUNNER" poweroff vm2 || return 1
    POWEROFF_AT=$SECONDS
    retry $((TTL + 120)) xs vm1 "! weftctl leases -etcd-endpoints $ENDPOINTS | grep -q '${s2%/*}'" >/dev/null ||
        { echo "vm2's lease $s2 still listed"; return 1; }
    echo "vm2's lease $s2 gone after $((SECONDS - t0))s (TTL ${TTL}s)"
    retry 60 xs vm1 "[[ -z \$(ip route show $s2) ]]" >/dev/null || { echo "vm1 still routes $s2"; return 1; }
    retry 60 xs vm3 "[[ -z \$(ip route show $s2) ]]" >/dev/null || { echo "vm3 still routes $s2"; return 1; }
    echo "vm1 and vm3 dropped the route to $s2 $((SECONDS - t0))s after the power cut"
    retry 30 ping_from 1 3 >/dev/null && retry 30 ping_from 3 1 >/dev/null
}


# -- the scheduler (weft-agent.service on each VM, units under the systemd runner) -------

SCHED='env WEFT_ETCD_ENDPOINTS=$(sed -n "s/^FLANNELD_ETCD_ENDPOINTS=//p" /etc/weft/flanneld.env)'
sched() {  # sched VM ARGS...: weftctl's fleet verbs in VM against the cluster's store
    local vm=$1
    shift
    xs "$vm" "$SCHED weftctl $(printf '%q ' "$@")"
}

agent_runs() {  # weft-agent active under systemd, chose the systemd runner, and shares
    # PID 1's mount namespace (else the netns it makes are invisible to systemd)
    xs "$1" 'systemctl is-active weft-agent &&
        pid=$(systemctl show -P MainPID weft-agent) &&
        [[ $(readlink /proc/$pid/ns/mnt) == "$(readlink /proc/1/ns/mnt)" ]] &&
        journalctl -u weft-agent -o cat --no-pager | grep -m1 "(systemd runner"'
}

machines_listed() {  # every agent in weftctl list-machines
    local out
    out=$(sched vm1 list-machines --no-legend) && echo "$out" &&
        [[ $(grep -c " ${UNDERLAY//./\\.}\\." <<<"$out") == "$NODES" ]]
}
agents_listed() {
    local out
    out=$(retry 120 machines_listed) || { echo "$out"; return 1; }
    echo "$out" | tr -s ' ' | paste -sd ';'
}

# pin.service holds weft3, so web.service (weft2 or weft3) goes to the least loaded: weft2
unit_files() {
    xs vm1 'mkdir -p /root/units && cd /root/units &&
        printf "%s\n" "[Unit]" "Description=weft VM check: holds weft3" "" "[Service]" \
            "ExecStart=/bin/sleep infinity" "" "[X-Fleet]" "MachineMetadata=host=weft3" >pin.service &&
        printf "%s\n" "[Unit]" "Description=weft VM check: a web server named web.skydns.local" "" \
            "[Service]" "ExecStartPre=/bin/mkdir -p /run/weft-web" \
            "ExecStartPre=/bin/sh -c \"hostname >/run/weft-web/index.html\"" \
            "ExecStart=/usr/bin/python3 -m http.server 8000 --directory /run/weft-web" \
            "Restart=always" "RestartSec=1" "" "[X-Fleet]" "MachineMetadata=host=weft2 host=weft3" \
            "" "[X-Weft]" "Network=true" "Service=web:8000" >web.service'
}

web_row() {  # web.service's list-units row as "IP ACTIVE ADDRESS"
    sched vm1 list-units --json | python3 -c '
import json, sys
for u in json.load(sys.stdin):
    if u["unit"] == "web.service":
        print(u["ip"], u["active"], u["address"])'
}

web_on() {  # web_on IP: web.service is active on the machine at IP (prints its row)
    local row
    row=$(web_row) && echo "$row" && [[ $row == "$1 active "* ]]
}

WEB_ADDR=""
sched_start() {  # weftctl start: pin on weft3, web on weft2, run by systemd as runtime units
    unit_files || return 1
    # (blocks at most ~200 s, within the exec channel's 300 s)
    sched vm1 start --block-attempts 200 /root/units/pin.service || return 1
    sched vm1 start --block-attempts 200 /root/units/web.service || return 1
    local row
    row=$(retry 120 web_on "$UNDERLAY.12") ||
        { sched vm1 list-units; return 1; }
    WEB_ADDR=${row##* }
    sched vm1 list-units
    # the systemd runner: a runtime unit in /run/systemd/system, in the container's netns
    xs vm2 'systemctl show -p ActiveState -p FragmentPath -p NetworkNamespacePath -p MainPID web.service &&
        [[ $(systemctl show -P FragmentPath web.service) == /run/systemd/system/web.service ]] &&
        [[ $(systemctl is-active web.service) == active ]] &&
        [[ -n $(systemctl show -P NetworkNamespacePath web.service) ]] &&
        [[ $(systemctl show -P FragmentPath pin.service) == "" || $(systemctl is-active pin.service) != active ]]' ||
        return 1
    xs vm3 '[[ $(systemctl show -P FragmentPath pin.service) == /run/systemd/system/pin.service ]] &&
        systemctl is-active pin.service' || return 1
    echo "web.service active on vm2 at $WEB_ADDR, a systemd runtime unit; pin.service on vm3"
}

web_answer() {  # web_answer VM CONTAINER ADDR: resolve web.skydns.local, GET it: "ADDR BODY"
    xs "$1" "set -e; a=\$(ip netns exec $2 dig @$(vm_ip_of "$1") web.$DOMAIN A +short +time=3 +tries=2 | sort | paste -sd,)
        [[ \$a == '$3' ]] || { echo \"web.$DOMAIN: \$a (want $3)\"; exit 1; }
        body=\$(ip netns exec $2 python3 -c 'import sys, urllib.request
print(urllib.request.urlopen(\"http://\" + sys.argv[1] + \":8000/\", timeout=5).read().decode().strip())' \$a)
        echo \"\$a \$body\""
}
vm_ip_of() { echo "$UNDERLAY.$((10 + ${1#vm}))"; }

sched_name() {  # the name resolves (dig from c1 on vm1) to the unit's address, which serves
    local out
    out=$(retry 60 web_answer vm1 c1 "$WEB_ADDR") || { echo "$out"; return 1; }
    [[ $out == "$WEB_ADDR $(x vm2 hostname)" ]] || { echo "$out"; return 1; }  # vm2 / weft2
    sched vm1 journal -n 3 web.service || return 1
    echo "web.$DOMAIN -> $WEB_ADDR from c1 on vm1, GET answered by vm2"
}

sched_moved() {  # after vm2's power cut: web.service on vm3, its name follows
    local row addr out
    row=$(retry 180 web_on "$UNDERLAY.13") ||
        { echo "web.service: $row"; sched vm1 list-units; return 1; }
    echo "web.service active on vm3 $((SECONDS - POWEROFF_AT))s after the power cut"
    addr=${row##* }
    out=$(retry 120 web_answer vm1 c1 "$addr") || { echo "$out"; return 1; }
    [[ $out == "$addr $(x vm3 hostname)" ]] || { echo "$out"; return 1; }
    sched vm1 list-units
    echo "web.$DOMAIN -> $addr (was $WEB_ADDR) $((SECONDS - POWEROFF_AT))s after the power cut; GET answered by vm3"
}

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

for ((i = 1; i <= NODES; i++)); do
    check "vm$i: systemctl is-system-running" system_running "vm$i"
    check "vm$i: flanneld and dnsd active" units_active "vm$i"
    check "vm$i: flanneld ready (sd_notify) after its lease was written" ready_after_lease "vm$i"
    check "vm$i: flanneld has CAP_NET_ADMIN" has_capability "vm$i" flanneld 12 CAP_NET_ADMIN
    check "vm$i: dnsd has CAP_NET_BIND_SERVICE" has_capability "vm$i" dnsd 10 CAP_NET_BIND_SERVICE
done
check "containers made by the CNI plugin on each VM" add_containers
check "vxlan: containers on different VMs ping each other" ping_matrix
check "dig from a container on vm3 resolves a name registered on vm1" dns_across
check "vm2: systemctl restart flanneld under a ping flood loses no packet, keeps the subnet" restart_under_flood
check "vm2: systemctl kill -s KILL flanneld is restarted by Restart= and recovers" killed_and_restarted
check "host-gw: backend switched and flanneld restarted on every VM" switch_backend host-gw
check "host-gw: vm1 routes vm2's subnet via vm2's address" host_gw_routes
check "host-gw: containers on different VMs ping each other" ping_matrix
check "vm1: journalctl -u flanneld priorities" journal_priorities vm1
for ((i = 1; i <= NODES; i++)); do
    check "vm$i: weft-agent.service active with the systemd runner" agent_runs "vm$i"
done
check "sched: weftctl list-machines lists the $NODES agents" agents_listed
check "sched: weftctl start runs units as systemd runtime units (web on vm2, pin on vm3)" sched_start
check "sched: web.$DOMAIN resolves from a container on vm1 and serves over the overlay" sched_name
check "podman (CNI backend) runs a container on weft's network on each VM" podman_runs
check "power off vm2: its lease expires and the others drop its routes" poweroff_vm2
check "sched: vm2's web.service moves to vm3 and its name follows" sched_moved
check "vm1: journalctl -u flanneld priorities after the power cut" journal_priorities vm1

say "failed: ${failures[*]:-none}"
echo "$passed passed, $failed failed"
((failed == 0))
