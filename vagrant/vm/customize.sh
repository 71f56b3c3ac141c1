#!/usr/bin/env bash
# mmdebstrap --customize-hook for qemu-cluster.sh's image: $1 is the new root.
set -euo pipefail
root=$1
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
echo vm >"$root/etc/hostname"
printf '/dev/vda / ext4 rw,errors=remount-ro 0 1\n' >"$root/etc/fstab"
: >"$root/etc/machine-id"            # a fresh one per VM on first boot
install -m 0755 "$here/weft-vm-agent" "$root/usr/local/sbin/weft-vm-agent"
install -m 0644 "$here/weft-vm-agent.service" "$here/weft-vm-net.service" "$root/etc/systemd/system/"
chroot "$root" systemctl enable weft-vm-agent.service weft-vm-net.service
# nothing here reaches a mirror; keep timers from eating emulated CPU
chroot "$root" systemctl mask apt-daily.timer apt-daily-upgrade.timer man-db.timer \
    e2scrub_all.timer fstrim.timer podman.socket podman.service podman-restart.service \
    podman-auto-update.timer
chroot "$root" passwd -d root >/dev/null      # serial console login for debugging
printf '9p\n9pnet_virtio\n' >"$root/etc/modules-load.d/weft-vm.conf"
# journald: keep the journal across a flanneld restart, in memory
mkdir -p "$root/etc/systemd/journald.conf.d"
printf '[Journal]\nStorage=volatile\n' >"$root/etc/systemd/journald.conf.d/weft-vm.conf"
