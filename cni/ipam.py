"""IPAM with host-local's on-disk layout: a pure round-robin allocator over a flock'd dir.

Layout (compatible with the reference host-local plugin), in ``<dataDir>/<network>/``:

* ``<ip>``: one file per allocated address, mode 0600, created O_EXCL, holding
  ``<containerID>\\r\\n<ifname>`` (older host-local wrote the containerID only;
  both are read).
* ``last_reserved_ip.<i>``: the address handed out last from range set ``i``
  (dual stack: set 0 IPv4, set 1 IPv6, as flannel's CNI configures host-local).
* ``lock``: every operation holds ``flock(LOCK_EX)`` on it (after a per-directory
  in-process lock, so the helper's threads queue on that instead).

A network has one or more *range sets* (host-local's ``ranges``: one address
from each set, so a dual-stack network has an IPv4 set and an IPv6 set); a set
is a list of ``Range`` of one family. ``parse_ranges`` reads them from the
netconf (errors name the field), ``choose`` is the pure allocator: round robin
over the set from last_reserved+1, wrapping, never a gateway; ``DiskStore`` is
the I/O shell around the directory. Addresses of both families share the
directory, named as Go's ``net.IP.String`` names them.
"""

from __future__ import annotations

import _thread
import fcntl
import os

from cni.errors import AttachmentExistsError, ConfigError, EnvError, IOFailure, TryAgainError
from cni.ip4 import IPv4, Net4
from cni.ip6 import IPv6, Net6, parse_ip, parse_net

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Container, Iterable, Sequence
    from typing import Any

    Addr = IPv4 | IPv6
    Net = Net4 | Net6

LAST_RESERVED = "last_reserved_ip.0"  # set 0; set i is last_reserved_ip.<i>
LOCK = "lock"
_IP_START = frozenset("0123456789abcdef:")  # first character of an address file's name

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
    """One range of one family: the subnet, first/last assignable address and the gateway.

    Defaults as host-local: gateway and start network+1, end the last address
    (IPv4: the one before broadcast); /31, /32, /127 and /128 have no room.
    """

    __slots__ = ("end", "gateway", "start", "subnet", "version")

    def __init__(self, subnet: Net, gateway: Addr | None = None,
                 start: Addr | None = None, end: Addr | None = None) -> None:
        v6 = isinstance(subnet, Net6)
        self.version = 6 if v6 else 4
        if subnet.prefixlen > (126 if v6 else 30):
            raise ConfigError(f"subnet {subnet} is too small (/{subnet.prefixlen} has no "
                              "host range)")
        self.subnet = subnet
        first = subnet.network_address + 1
        self.gateway: Addr = gateway if gateway is not None else first
        self.start: Addr = start if start is not None else first
        self.end: Addr = end if end is not None else (
            subnet.broadcast_address if v6 else subnet.broadcast_address - 1)
        for what, ip in (("rangeStart", self.start), ("rangeEnd", self.end),
                         ("gateway", self.gateway)):
            if ip not in subnet:
                raise ConfigError(f"{what} {ip} is not in subnet {subnet}")
        if self.start.value > self.end.value:
            raise ConfigError(f"range {self.start}-{self.end} does not fit subnet {subnet}")

    def size(self) -> int:
        return int(self.end) - int(self.start) + 1

    def contains(self, ip: object) -> bool:
        """``ip`` is in the subnet and between start and end."""
        return (isinstance(ip, IPv4 | IPv6) and ip in self.subnet
                and self.start.value <= ip.value <= self.end.value)

    def overlaps(self, other: Range) -> bool:
        return (self.version == other.version and self.start.value <= other.end.value
                and other.start.value <= self.end.value)

    def __str__(self) -> str:
        return f"{self.start}-{self.end}"


def _ip_field(item: dict[str, Any], key: str, where: str, v6: bool) -> Addr | None:
    text = item.get(key)
    if text is None:
        return None
    try:
        if not isinstance(text, str):
            raise ValueError(text)
        ip = parse_ip(text)
    except ValueError:
        raise ConfigError(f"{where}.{key} {text!r} is not an IP address") from None
    if isinstance(ip, IPv6) != v6:
        raise ConfigError(f"{where}.{key} {text} is not in the subnet's family "
                          f"(IPv{6 if v6 else 4})")
    return ip


def parse_range(item: object, where: str) -> Range:
    """One host-local range ``{subnet, rangeStart, rangeEnd, gateway}``."""
    if not isinstance(item, dict):
        raise ConfigError(f"{where} must be an object {{subnet, rangeStart, rangeEnd, gateway}}")
    text = item.get("subnet")
    if not isinstance(text, str) or not text:
        raise ConfigError(f"{where}.subnet is missing")
    try:
        subnet = parse_net(text, strict=False)
    except ValueError as e:
        raise ConfigError(f"{where}.subnet {text!r} is not a network ({e})") from None
    v6 = isinstance(subnet, Net6)
    try:
        return Range(subnet, _ip_field(item, "gateway", where, v6),
                     _ip_field(item, "rangeStart", where, v6),
                     _ip_field(item, "rangeEnd", where, v6))
    except ConfigError as e:
        raise ConfigError(f"{where}: {e.msg}") from None


def parse_ranges(ipam: dict[str, Any]) -> list[list[Range]] | None:
    """host-local's ``ipam.ranges`` (list of range sets), or the flat ``ipam.subnet``
    as set 0; None when the config has neither (the lease's subnets are used)."""
    raw = ipam.get("ranges")
    sets: list[list[Range]] = []
    if ipam.get("subnet") is not None:
        sets.append([parse_range({k: ipam.get(k) for k in (
            "subnet", "rangeStart", "rangeEnd", "gateway")}, "ipam")])
    if raw is not None:
        if not isinstance(raw, list):
            raise ConfigError("ipam.ranges must be a list of range sets (lists of ranges)")
        for i, rset in enumerate(raw):
            if not isinstance(rset, list) or not rset:
                raise ConfigError(f"ipam.ranges[{i}] must be a non-empty list of ranges")
            sets.append([parse_range(r, f"ipam.ranges[{i}][{j}]") for j, r in enumerate(rset)])
    if not sets:
        return None
    flat = [(i, j, r) for i, rset in enumerate(sets) for j, r in enumerate(rset)]
    for n, (i, j, r) in enumerate(flat):
        if r.version != sets[i][0].version:
            raise ConfigError(f"ipam.ranges[{i}] mixes IPv4 and IPv6 ranges")
        for i2, j2, r2 in flat[n + 1:]:
            if r.overlaps(r2):
                raise ConfigError(f"ipam.ranges[{i}][{j}] {r} overlaps "
                                  f"ipam.ranges[{i2}][{j2}] {r2}")
    return sets


def _as_set(rset: Range | Sequence[Range]) -> Sequence[Range]:
    return [rset] if isinstance(rset, Range) else rset


def check_requested(rset: Range | Sequence[Range], ip_text: str, source: str,
                    taken: Container[Addr]) -> Addr:
    """Validate a specifically requested IP; errors name the IP and where it came from."""
    ranges = _as_set(rset)
    error = EnvError if source.startswith("CNI_ARGS") else ConfigError
    family = f"IPv{ranges[0].version}"
    try:
        ip = parse_ip(ip_text.split("/")[0])
    except ValueError:
        raise error(f"{source}: {ip_text!r} is not an {family} address") from None
    rng = next((r for r in ranges if r.contains(ip)), None)
    if rng is None:
        spans = ", ".join(f"{r} (subnet {r.subnet})" for r in ranges)
        raise error(f"{source}: requested IP {ip} is outside this host's range {spans}")
    if ip == rng.gateway:
        raise error(f"{source}: requested IP {ip} is the gateway")
    if ip in taken:
        raise TryAgainError(f"{source}: requested IP {ip} is already allocated")
    return ip


def choose(rset: Range | Sequence[Range], last: Addr | None,
           taken: Container[Addr]) -> tuple[Addr, Range]:
    """Round robin over the set: the first free address after ``last`` (wrapping from
    the last range to the first, as host-local's iterator), never a range's gateway."""
    ranges = _as_set(rset)
    at = next((k for k, r in enumerate(ranges) if r.contains(last)), None)
    for step in range(len(ranges) + 1):
        k = ((at or 0) + step) % len(ranges)
        rng = ranges[k]
        size = rng.size()
        first = int(rng.start)
        # the range holding last resumes after it; the second visit of it (after a
        # full round) covers what lay before last
        if step == 0 and at is not None and last is not None:
            offset, count = last.value - first + 1, size - (last.value - first + 1)
        elif step == len(ranges):
            if at is None or last is None:
                break
            offset, count = 0, last.value - first + 1
        else:
            offset, count = 0, size
        make = type(rng.start)
        for i in range(offset, offset + count):
            ip = make(first + i)
            if ip != rng.gateway and ip not in taken:
                return ip, rng
    spans = ", ".join(map(str, ranges))
    size = sum(r.size() for r in ranges)
    raise TryAgainError(f"no IP addresses available in range set {spans}",
                        f"all {size} addresses of "
                        f"{', '.join(str(r.subnet) for r in ranges)} are allocated; "
                        "DEL or GC unused attachments")


class _Names:
    """IPs held, as the set of their file names (``ip in names`` formats ``ip``)."""

    __slots__ = ("names",)

    def __init__(self, names: Iterable[str]) -> None:
        self.names = {n.strip() for n in names}

    def __contains__(self, ip: object) -> bool:
        return isinstance(ip, IPv4 | IPv6) and str(ip) in self.names

    def __bool__(self) -> bool:
        for n in self.names:
            try:
                parse_ip(n)
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

    def allocations(self) -> dict[Addr, tuple[str, str]]:
        """Every allocated IP -> (containerID, ifname), as ``owner`` reads each (GC's view)."""
        out: dict[Addr, tuple[str, str]] = {}
        if not os.path.isdir(self.dir):
            return out
        for name in os.listdir(self.dir):
            if name[0] not in _IP_START:
                continue
            try:
                ip = parse_ip(name)
            except ValueError:
                continue
            owner = self.owner(ip)  # None: released meanwhile
            if owner is not None:
                out[ip] = owner
        return out

    def last_reserved(self, index: int = 0) -> Addr | None:
        """``last_reserved_ip.<index>``: the address range set ``index`` handed out last."""
        try:
            with open(os.path.join(self.dir, f"last_reserved_ip.{index}"),
                      encoding="ascii") as f:
                return parse_ip(f.read().strip())
        except (OSError, ValueError):
            return None

    def reserve(self, ip: Addr, cid: str, ifname: str,
                update_last: bool = True, index: int = 0) -> None:
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
            fd = os.open(os.path.join(self.dir, f"last_reserved_ip.{index}"),
                         os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
            try:
                os.write(fd, str(ip).encode())
            finally:
                os.close(fd)

    def release(self, ip: Addr) -> None:
        try:  # noqa: SIM105 - contextlib is an import the exec'd path avoids
            os.unlink(os.path.join(self.dir, str(ip)))
        except FileNotFoundError:
            pass

    def taken(self) -> Container[Addr]:
        """Allocated IPs from the file names alone (one listdir: cheap under the lock).

        A membership test formats the address rather than parsing every name:
        the parsers accept the canonical forms that ``str`` produces (and
        host-local writes), so the answers are the same.
        """
        return _Names(name for name in os.listdir(self.dir) if name[0] in _IP_START)

    def _held_by(self, cid: str) -> list[tuple[Addr, tuple[str, str]]]:
        """``allocations()`` restricted to files naming ``cid`` (as owner, any ifname).

        Every file is still read (as host-local's GetByID does), but parsed only
        when its raw bytes contain the container ID.
        """
        needle = cid.encode()
        exact = "\ufffd" not in cid  # else only the decoded text can tell
        out: list[tuple[Addr, tuple[str, str]]] = []
        try:
            dfd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            return out
        try:
            for name in os.listdir(dfd):
                if name[0] not in _IP_START:
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
                    ip = parse_ip(name)
                except ValueError:
                    continue
                out.append((ip, (cid, owner_if.strip())))
        finally:
            os.close(dfd)
        return out

    def check_duplicate(self, sets: Range | Sequence[Sequence[Range]], cid: str,
                        ifname: str) -> None:
        """ADD for a (cid, ifname) that already holds an IP in one of the ranges is an error.

        Safe without the lock: the runtime never works on one container in
        parallel, so only this process could create that file meanwhile.
        """
        subnets = [r.subnet for rset in ([[sets]] if isinstance(sets, Range) else sets)
                   for r in rset]
        for ip, owner in self._held_by(cid):
            if owner == (cid, ifname) and any(ip in n for n in subnets):
                raise AttachmentExistsError(
                    f"container {cid} interface {ifname} already has IP {ip} "
                    "(duplicate allocation)", "DEL the attachment before adding it again")

    def allocate(self, rng: Range | Sequence[Range], cid: str, ifname: str,
                 requested: list[tuple[str, str]], index: int = 0) -> Addr:
        """Reserve one IP of range set ``index`` for (cid, ifname): the requested one or
        the next round robin.

        Call with the lock held, after ``check_duplicate``. The critical section
        is a listdir and two small writes: with a hundred ADDs racing for two
        CPUs, whatever runs under the lock is multiplied by the convoy behind it.
        """
        return self._allocate(rng, cid, ifname, requested, index, self.taken())[0]

    def _allocate(self, rset: Range | Sequence[Range], cid: str, ifname: str,
                  requested: list[tuple[str, str]], index: int, taken: Container[Addr],
                  ) -> tuple[Addr, Range]:
        ranges = _as_set(rset)
        if requested:
            if len(requested) > 1:
                raise ConfigError(f"more than one specific IP requested for one IPv"
                                  f"{ranges[0].version} range set: "
                                  + ", ".join(f"{s} {ip}" for s, ip in requested))
            source, text = requested[0]
            ip = check_requested(ranges, text, source, taken)
            self.reserve(ip, cid, ifname, update_last=False, index=index)
            return ip, next(r for r in ranges if r.contains(ip))
        ip, rng = choose(ranges, self.last_reserved(index), taken)
        self.reserve(ip, cid, ifname, index=index)
        return ip, rng

    def allocate_sets(self, sets: Sequence[Sequence[Range]], cid: str, ifname: str,
                      requested: list[tuple[str, str]]) -> list[tuple[Addr, Range]]:
        """One IP from every range set (host-local's ADD), under the lock.

        Each requested IP goes to the set of its family that contains it (else to
        the first set of its family, whose check names the range it missed); a set
        that fails releases what the sets before it reserved.
        """
        per_set: list[list[tuple[str, str]]] = [[] for _ in sets]
        for source, text in requested:
            head = text.split("/")[0]
            v6 = ":" in head
            family = [i for i, rset in enumerate(sets) if (rset[0].version == 6) == v6]
            if not family:
                error = EnvError if source.startswith("CNI_ARGS") else ConfigError
                raise error(f"{source}: requested IP {head} is IPv{6 if v6 else 4} but this "
                            f"network has no IPv{6 if v6 else 4} range")
            try:
                ip: Addr | None = parse_ip(head)
            except ValueError:
                ip = None
            home = next((i for i in family if any(r.contains(ip) for r in sets[i])),
                        family[0])
            per_set[home].append((source, text))
        taken = self.taken()
        got: list[tuple[Addr, Range]] = []
        try:
            for i, rset in enumerate(sets):
                got.append(self._allocate(rset, cid, ifname, per_set[i], i, taken))
        except BaseException:
            for ip_, _ in got:
                self.release(ip_)
            raise
        return got

    def owner(self, ip: Addr) -> tuple[str, str] | None:
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

    def find_hinted(self, cid: str, ifname: str, hints: Sequence[Addr]) -> list[Addr]:
        """Like ``find``, but first reads only the files of ``hints`` (prevResult's IPs)."""
        hit = [ip for ip in hints if self.owner(ip) == (cid, ifname)]
        return hit or self.find(cid, ifname)

    def find(self, cid: str, ifname: str) -> list[Addr]:
        """IPs held by (cid, ifname), falling back to files holding the cid alone."""
        held = self._held_by(cid)
        exact = [ip for ip, owner in held if owner == (cid, ifname)]
        return exact or [ip for ip, owner in held if owner == (cid, "")]
