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
# the Vagrant box (vagrant-cluster.sh) is this image too: sshd, a `vagrant` user with
# Vagrant's insecure key and password-less sudo; host keys made at first boot (one per
# VM, not one per image); DHCP on eth0 by systemd-networkd, which only a box's kernel
# command line starts (systemd.wants=systemd-networkd.service): qemu-cluster.sh's VMs
# keep their static weft.ip= address and no networkd
rm -f "$root"/etc/ssh/ssh_host_*
mkdir -p "$root/etc/systemd/system/ssh.service.d"
printf '[Service]\nExecStartPre=/usr/bin/ssh-keygen -A\n' >"$root/etc/systemd/system/ssh.service.d/weft-vm.conf"
printf 'UseDNS no\n' >"$root/etc/ssh/sshd_config.d/weft-vm.conf"
chroot "$root" useradd --create-home --shell /bin/bash vagrant
printf 'vagrant ALL=(ALL) NOPASSWD: ALL\nDefaults:vagrant !requiretty\n' >"$root/etc/sudoers.d/vagrant"
chmod 0440 "$root/etc/sudoers.d/vagrant"
install -d -m 0700 -o "$(chroot "$root" id -u vagrant)" -g "$(chroot "$root" id -g vagrant)" \
    "$root/home/vagrant/.ssh"
pubs=(/usr/share/rubygems-integration/all/gems/vagrant-*/keys/vagrant.pub)
pub=${pubs[0]}
if [[ -f $pub ]]; then
    install -m 0600 -o "$(chroot "$root" id -u vagrant)" -g "$(chroot "$root" id -g vagrant)" \
        "$pub" "$root/home/vagrant/.ssh/authorized_keys"
fi
mkdir -p "$root/etc/systemd/network"
printf '[Match]\nName=eth0\n\n[Network]\nDHCP=ipv4\n' >"$root/etc/systemd/network/80-weft-vagrant-eth0.network"
chroot "$root" systemctl disable systemd-networkd.service systemd-networkd.socket \
    systemd-networkd-wait-online.service >/dev/null 2>&1 || true
