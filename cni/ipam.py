"""IPAM with host-local's on-disk layout: a pure round-robin allocator over a flock'd dir.

Layout (compatible with the reference host-local plugin), in ``<dataDir>/<network>/``:

* ``<ip>``: one file per allocated address, mode 0600, created O_EXCL, holding
  ``<containerID>\\r\\n<ifname>`` (older host-local wrote the containerID only;
  both are read).
* ``last_reserved_ip.0``: the address handed out last (one range set).
* ``lock``: every operation holds ``flock(LOCK_EX)`` on it (after a per-directory
  in-process lock, so the helper's threads queue on that instead).

``choose`` is the pure allocator: round robin from last_reserved+1, wrapping,
never the gateway; ``DiskStore`` is the I/O shell around the directory.
"""

from __future__ import annotations

import _thread
import fcntl
import os

from cni.errors import AttachmentExistsError, ConfigError, EnvError, IOFailure, TryAgainError
from cni.ip4 import IPv4, Net4

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Container, Iterable

LAST_RESERVED = "last_reserved_ip.0"
LOCK = "lock"

# One in-process lock per store directory, taken before the flock: the resident
# helper serves a burst of ADDs/DELs in as many threads, and a flock convoy
# wakes every waiter on each release, where this lock hands over to one.
_DIR_LOCKS: dict[str, _thread.LockType] = {}
_DIR_LOCKS_GUARD = _thread.allocate_lock()


def _dir_lock(path: str) -> _thread.LockType:
    with _DIR_LOCKS_GUARD:
        lock = _DIR_LOCKS.get(path)
        if lock is None:
            lock = _DIR_LOCKS[path] = _thread.allocate_lock()
        return lock


class Range:
    """One IPv4 range: the subnet, first/last assignable address and the gateway."""

    __slots__ = ("end", "gateway", "start", "subnet")

    def __init__(self, subnet: Net4, gateway: IPv4,
                 start: IPv4 | None = None,
                 end: IPv4 | None = None) -> None:
        if subnet.prefixlen > 30:
            raise ConfigError(f"subnet {subnet} is too small (/31 and /32 have no host range)")
        self.subnet = subnet
        self.gateway = gateway
        self.start = start or subnet.network_address + 1
        self.end = end or subnet.broadcast_address - 1
        if not (self.start in subnet and self.end in subnet and self.start <= self.end):
            raise ConfigError(f"range {self.start}-{self.end} does not fit subnet {subnet}")

    def size(self) -> int:
        return int(self.end) - int(self.start) + 1


def check_requested(rng: Range, ip_text: str, source: str,
                    taken: Container[IPv4]) -> IPv4:
    """Validate a specifically requested IP; errors name the IP and where it came from."""
    error = EnvError if source.startswith("CNI_ARGS") else ConfigError
    try:
        ip = IPv4.parse(ip_text.split("/")[0])
    except ValueError:
        raise error(f"{source}: {ip_text!r} is not an IPv4 address") from None
    if ip not in rng.subnet or not rng.start <= ip <= rng.end:
        raise error(f"{source}: requested IP {ip} is outside this host's range "
                    f"{rng.start}-{rng.end} (subnet {rng.subnet})")
    if ip == rng.gateway:
        raise error(f"{source}: requested IP {ip} is the gateway")
    if ip in taken:
        raise TryAgainError(f"{source}: requested IP {ip} is already allocated")
    return ip


def choose(rng: Range, last: IPv4 | None,
           taken: Container[IPv4]) -> IPv4:
    """Round robin: the first free address after ``last`` (wrapping), never the gateway."""
    size = rng.size()
    first = int(rng.start)
    in_range = last is not None and rng.start <= last <= rng.end
    offset = int(last) - first + 1 if last is not None and in_range else 0
    for i in range(size):
        ip = IPv4(first + (offset + i) % size)
        if ip != rng.gateway and ip not in taken:
            return ip
    raise TryAgainError(f"no IP addresses available in range set {rng.start}-{rng.end}",
                        f"all {size} addresses of {rng.subnet} are allocated; "
                        "DEL or GC unused attachments")


class _Names:
    """IPs held, as the set of their file names (``ip in names`` formats ``ip``)."""

    __slots__ = ("names",)

    def __init__(self, names: Iterable[str]) -> None:
        self.names = {n.strip() for n in names}

    def __contains__(self, ip: object) -> bool:
        return isinstance(ip, IPv4) and str(ip) in self.names

    def __bool__(self) -> bool:
        for n in self.names:
            try:
                IPv4.parse(n)
            except ValueError:
                continue
            return True
        return False


class DiskStore:
    """host-local's directory for one network; use as a context manager (holds the lock)."""

    def __init__(self, data_dir: str, network: str) -> None:
        self.dir = os.path.join(data_dir, network)
        self._lock_fd = -1
        self._held: _thread.LockType | None = None

    def ensure_dir(self) -> DiskStore:
        try:
            os.makedirs(self.dir, mode=0o755, exist_ok=True)
        except OSError as e:
            raise IOFailure(f"IPAM store {self.dir}: {e.strerror}") from None
        return self

    def __enter__(self) -> DiskStore:
        """Hold this process's lock of the directory, then host-local's flock on ``lock``."""
        self.ensure_dir()
        held = _dir_lock(self.dir)
        held.acquire()
        try:
            self._lock_fd = os.open(os.path.join(self.dir, LOCK),
                                    os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        except BaseException as e:
            if self._lock_fd >= 0:
                os.close(self._lock_fd)
                self._lock_fd = -1
            held.release()
            if isinstance(e, OSError):
                raise IOFailure(f"IPAM store {self.dir}: {e.strerror}") from None
            raise
        self._held = held
        return self

    def __exit__(self, *exc: object) -> None:
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # closing releases the flock
            self._lock_fd = -1
        if self._held is not None:
            self._held.release()
            self._held = None

    def allocations(self) -> dict[IPv4, tuple[str, str]]:
        """Every allocated IP -> (containerID, ifname), as ``owner`` reads each (GC's view)."""
        out: dict[IPv4, tuple[str, str]] = {}
        if not os.path.isdir(self.dir):
            return out
        for name in os.listdir(self.dir):
            if name[0] not in "0123456789":
                continue
            try:
                ip = IPv4.parse(name)
            except ValueError:
                continue
            owner = self.owner(ip)  # None: released meanwhile
            if owner is not None:
                out[ip] = owner
        return out

    def last_reserved(self) -> IPv4 | None:
        try:
            with open(os.path.join(self.dir, LAST_RESERVED), encoding="ascii") as f:
                return IPv4.parse(f.read().strip())
        except (OSError, ValueError):
            return None

    def reserve(self, ip: IPv4, cid: str, ifname: str,
                update_last: bool = True) -> None:
        path = os.path.join(self.dir, str(ip))
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            raise TryAgainError(f"IP {ip} is already allocated") from None
        try:
            os.write(fd, f"{cid}\r\n{ifname}".encode())
        finally:
            os.close(fd)
        if update_last:  # rewritten in place, as host-local does (we hold the lock)
            fd = os.open(os.path.join(self.dir, LAST_RESERVED),
                         os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
            try:
                os.write(fd, str(ip).encode())
            finally:
                os.close(fd)

    def release(self, ip: IPv4) -> None:
        try:  # noqa: SIM105 - contextlib is an import the exec'd path avoids
            os.unlink(os.path.join(self.dir, str(ip)))
        except FileNotFoundError:
            pass

    def taken(self) -> Container[IPv4]:
        """Allocated IPs from the file names alone (one listdir: cheap under the lock).

        A membership test formats the address rather than parsing every name:
        ``IPv4.parse`` accepts only the canonical dotted quad that ``str``
        produces, so the answers are the same.
        """
        return _Names(name for name in os.listdir(self.dir) if name[0] in "0123456789")

    def _held_by(self, cid: str) -> list[tuple[IPv4, tuple[str, str]]]:
        """``allocations()`` restricted to files naming ``cid`` (as owner, any ifname).

        Every file is still read (as host-local's GetByID does), but parsed only
        when its raw bytes contain the container ID.
        """
        needle = cid.encode()
        exact = "\ufffd" not in cid  # else only the decoded text can tell
        out: list[tuple[IPv4, tuple[str, str]]] = []
        try:
            dfd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            return out
        try:
            for name in os.listdir(dfd):
                if name[0] not in "0123456789":
                    continue
                try:
                    fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=dfd)
                except FileNotFoundError:
                    continue
                try:
                    data = os.read(fd, 4096)
                finally:
                    os.close(fd)
                if exact and needle not in data:
                    continue
                owner, _, owner_if = data.decode("utf-8", "replace").partition("\r\n")
                if owner.strip() != cid:
                    continue
                try:
                    ip = IPv4.parse(name)
                except ValueError:
                    continue
                out.append((ip, (cid, owner_if.strip())))
        finally:
            os.close(dfd)
        return out

    def check_duplicate(self, rng: Range, cid: str, ifname: str) -> None:
        """ADD for a (cid, ifname) that already holds an IP in ``rng`` is an error.

        Safe without the lock: the runtime never works on one container in
        parallel, so only this process could create that file meanwhile.
        """
        for ip, owner in self._held_by(cid):
            if owner == (cid, ifname) and ip in rng.subnet:
                raise AttachmentExistsError(
                    f"container {cid} interface {ifname} already has IP {ip} "
                    "(duplicate allocation)", "DEL the attachment before adding it again")

    def allocate(self, rng: Range, cid: str, ifname: str,
                 requested: list[tuple[str, str]]) -> IPv4:
        """Reserve one IP for (cid, ifname): the requested one or the next round robin.

        Call with the lock held, after ``check_duplicate``. The critical section
        is a listdir and two small writes: with a hundred ADDs racing for two
        CPUs, whatever runs under the lock is multiplied by the convoy behind it.
        """
        taken = self.taken()
        if requested:
            if len(requested) > 1:
                raise ConfigError("more than one specific IP requested for one IPv4 range: "
                                  + ", ".join(f"{s} {ip}" for s, ip in requested))
            source, text = requested[0]
            ip = check_requested(rng, text, source, taken)
            self.reserve(ip, cid, ifname, update_last=False)
            return ip
        ip = choose(rng, self.last_reserved(), taken)
        self.reserve(ip, cid, ifname)
        return ip

    def owner(self, ip: IPv4) -> tuple[str, str] | None:
        """(containerID, ifname) holding ``ip``, or None if it is free."""
        try:
            fd = os.open(os.path.join(self.dir, str(ip)), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            text = os.read(fd, 4096).decode("utf-8", "replace")
        finally:
            os.close(fd)
        cid, _, ifname = text.partition("\r\n")
        return cid.strip(), ifname.strip()

    def find_hinted(self, cid: str, ifname: str, hints: list[IPv4]) -> list[IPv4]:
        """Like ``find``, but first reads only the files of ``hints`` (prevResult's IPs)."""
        hit = [ip for ip in hints if self.owner(ip) == (cid, ifname)]
        return hit or self.find(cid, ifname)

    def find(self, cid: str, ifname: str) -> list[IPv4]:
        """IPs held by (cid, ifname), falling back to files holding the cid alone."""
        held = self._held_by(cid)
        exact = [ip for ip, owner in held if owner == (cid, ifname)]
        return exact or [ip for ip, owner in held if owner == (cid, "")]
