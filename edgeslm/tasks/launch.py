"""The sandbox's launcher: run as a script (``python -I -S launch.py CONFIG``), standard library only.

It isolates what it can, says what it managed in ``isolation.json`` beside the work folder, then
forks the program's process and waits for it:

- new PID, network, IPC, UTS and mount namespaces (as root directly; otherwise inside a new user
  namespace where the kernel allows one). The program is PID 1 of its namespace, so when it ends,
  or the launcher is killed (the parent-death signal), the kernel kills every process it made;
  its network has only a loopback device that is down;
- every mount read-only except the work folder; the interpreter's prefix bound read-only at
  ``ROOT/python`` (so an unprivileged user reaches it where the real one sits in a private home);
- as root, a user id of its own with no capabilities and no groups, so ``RLIMIT_NPROC`` counts;
- rlimits on CPU seconds, address space, file size, open files, processes and core dumps.

Exit status: the program's, or 128 + the signal that killed it.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import signal
import sys
from typing import Any

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND = 1, 2, 4, 8, 32, 4096
MS_NOATIME, MS_NODIRATIME, MS_REC, MS_PRIVATE, MS_RELATIME = 1024, 2048, 16384, 1 << 18, 1 << 21
ST_TO_MS = {1: MS_RDONLY, 2: MS_NOSUID, 4: MS_NODEV, 8: MS_NOEXEC, 1024: MS_NOATIME, 2048: MS_NODIRATIME,
            4096: MS_RELATIME}  # statvfs's f_flag bits -> mount flags: a remount must keep the locked ones
PR_SET_PDEATHSIG = 1
UID_BASE = 0x7F000000  # as root: the program runs as UID_BASE + (launcher pid mod 2^16), in no group

libc = ctypes.CDLL(None, use_errno=True)


def _mount(source: str | None, target: str, fstype: str | None, flags: int) -> None:
    def enc(s: str | None) -> bytes | None:
        return None if s is None else os.fsencode(s)

    if libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), None) != 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()), target)


def _mount_points() -> list[str]:
    points: list[str] = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            field = line.split()[4]
            points.append(field.encode("latin-1", "surrogateescape").decode("unicode_escape"))
    return points


def _kept_flags(path: str) -> int:
    f_flag = os.statvfs(path).f_flag
    return sum(ms for st, ms in ST_TO_MS.items() if f_flag & st)


def _user_namespace() -> bool:
    uid, gid = os.getuid(), os.getgid()
    if libc.unshare(CLONE_NEWUSER) != 0:
        return False
    for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
        with open(f"/proc/self/{name}", "w") as f:
            f.write(text)
    return True


def _read_only_view(cfg: dict[str, Any]) -> list[str]:
    """Every mount read-only but the work folder; the interpreter bound at ROOT/python."""
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    _mount(cfg["prefix"], cfg["python"], None, MS_BIND | MS_REC)
    _mount(cfg["work"], cfg["work"], None, MS_BIND)
    failed: list[str] = []
    for point in reversed(_mount_points()):
        if point == cfg["work"]:
            continue
        try:
            flags = _kept_flags(point)
            if not flags & MS_RDONLY:
                _mount(None, point, None, MS_REMOUNT | MS_BIND | MS_RDONLY | flags)
        except OSError:
            failed.append(point)
    return failed


def _limit(limits: dict[str, int]) -> None:
    for name, value in (("RLIMIT_CPU", limits["cpu_seconds"]), ("RLIMIT_AS", limits["memory_bytes"]),
                        ("RLIMIT_FSIZE", limits["file_bytes"]), ("RLIMIT_NOFILE", limits["open_files"]),
                        ("RLIMIT_NPROC", limits["processes"]), ("RLIMIT_CORE", 0)):
        resource.setrlimit(getattr(resource, name), (value, value))


def _child(cfg: dict[str, Any], namespaces: bool, as_root: bool) -> None:
    """The namespace's first process: drop privileges, start the program, wait for it. When this
    process ends, the kernel ends every other process in the namespace."""
    if namespaces:
        try:  # a /proc of its own PID namespace: the program sees none of the host's processes
            _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
        except OSError:
            pass
    os.chdir(cfg["work"])
    _limit(cfg["limits"])
    if as_root:
        uid = _uid(cfg)
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # after setuid, which clears it
    program = os.fork()
    if program == 0:
        _exec(cfg, namespaces)
    while True:  # the namespace's init: reap whatever ends until the program does
        pid, status = os.waitpid(-1, 0)
        if pid == program:
            os._exit(os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status))


def _exec(cfg: dict[str, Any], namespaces: bool) -> None:
    try:
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(cfg["stdout_fd"], 1)
        os.dup2(cfg["stderr_fd"], 2)
        os.closerange(3, 1 << 16)
        exe = os.path.join(cfg["python"], cfg["exe_rel"]) if namespaces else cfg["exe"]
        env = {"LD_LIBRARY_PATH": os.path.join(cfg["python"] if namespaces else cfg["prefix"], "lib"),
               "PYTHONHASHSEED": "0", "LANG": "C.UTF-8"}
        os.execve(exe, [exe, "-I", "-S", "-B", cfg["program"]], env)
    finally:
        os._exit(126)


def _uid(cfg: dict[str, Any]) -> int:
    return UID_BASE + int(cfg["launcher"]) % 65536


def main() -> None:
    cfg = json.loads(sys.argv[1])
    cfg["launcher"] = os.getpid()
    as_root = os.geteuid() == 0
    if as_root:  # the work folder becomes the program's alone
        os.chown(cfg["work"], _uid(cfg), _uid(cfg))
    applied: list[str] = []
    failed: list[str] = []
    # opened before the file system turns read-only
    cfg["stdout_fd"], cfg["stderr_fd"] = (os.open(cfg[k], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                                          for k in ("stdout", "stderr"))
    report = open(cfg["report"], "w")
    flags = CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS
    namespaces = (as_root or _user_namespace()) and libc.unshare(flags) == 0
    if namespaces:
        applied += ["pid", "network", "ipc"]
        try:
            failed = _read_only_view(cfg)
            applied += ["filesystem"] if not failed else []
        except OSError as exc:
            failed = [f"{exc.filename}: {exc.strerror}"]
    if as_root:
        applied.append("user")
    applied.append("rlimits")
    with report:
        json.dump({"applied": applied, "not_read_only": failed}, report)
    pid = os.fork()
    if pid == 0:
        try:
            _child(cfg, namespaces, as_root)
        finally:
            os._exit(126)
    _, status = os.waitpid(pid, 0)
    os._exit(os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status))


if __name__ == "__main__":
    main()
