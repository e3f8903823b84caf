"""Checks, in the monitor, that every confinement mechanism exists before any zygote starts.

Each failure names the mechanism and how to get it. `_SIMULATE_MISSING` is a test-only hook
(tests monkeypatch it to exercise the messages on a machine that has everything); nothing
in the platform sets it, and it can only make confinement *refuse* to run, never weaker.
"""

from __future__ import annotations

import os

from trapeze.sandbox import syscalls as sc
from trapeze.sandbox.seccomp_filter import kernel_supports_seccomp
from trapeze.sandbox.spec import ConfinementUnavailable

_SIMULATE_MISSING: frozenset[str] = frozenset()

HOW = {
    "seccomp": "use a kernel built with CONFIG_SECCOMP_FILTER=y and install libseccomp2 "
    "(apt-get install libseccomp2) and the pyseccomp package",
    "landlock": "use Linux >= 5.13 with CONFIG_SECURITY_LANDLOCK=y and 'landlock' in the "
    "lsm= boot parameter (check /sys/kernel/security/lsm)",
    "user namespaces": "run as root, or enable unprivileged user namespaces: "
    "sysctl -w kernel.unprivileged_userns_clone=1 user.max_user_namespaces=10000 "
    "(Ubuntu: also kernel.apparmor_restrict_unprivileged_userns=0)",
    "pidfd": "use Linux >= 5.3 (pidfd_open, pidfd_send_signal)",
}


def _read_int(path: str) -> int | None:
    try:
        with open(path) as fh:
            return int(fh.read().strip())
    except (OSError, ValueError):
        return None


def probe(need_userns: bool) -> None:
    if "seccomp" in _SIMULATE_MISSING:
        raise ConfinementUnavailable("seccomp", f"not available (simulated); {HOW['seccomp']}")
    reason = kernel_supports_seccomp()
    if reason:
        raise ConfinementUnavailable("seccomp", f"{reason}; {HOW['seccomp']}")

    try:
        if "landlock" in _SIMULATE_MISSING:
            raise OSError(95, "Operation not supported (simulated)")
        abi = sc.landlock_abi_version()
    except OSError as exc:
        raise ConfinementUnavailable("landlock", f"{exc.strerror}; {HOW['landlock']}") from None
    if abi < 1:
        raise ConfinementUnavailable("landlock", f"ABI {abi}; {HOW['landlock']}")

    if not hasattr(os, "pidfd_open"):
        raise ConfinementUnavailable("pidfd", HOW["pidfd"])

    if need_userns:
        if "user namespaces" in _SIMULATE_MISSING:
            raise ConfinementUnavailable(
                "user namespaces", f"disabled (simulated); {HOW['user namespaces']}"
            )
        if _read_int("/proc/sys/user/max_user_namespaces") == 0:
            raise ConfinementUnavailable(
                "user namespaces", f"user.max_user_namespaces is 0; {HOW['user namespaces']}"
            )
        if _read_int("/proc/sys/kernel/unprivileged_userns_clone") == 0:
            raise ConfinementUnavailable(
                "user namespaces",
                f"kernel.unprivileged_userns_clone is 0; {HOW['user namespaces']}",
            )
        if _read_int("/proc/sys/kernel/apparmor_restrict_unprivileged_userns") == 1:
            raise ConfinementUnavailable(
                "user namespaces",
                f"AppArmor restricts unprivileged user namespaces; {HOW['user namespaces']}",
            )
