"""The kernel's own record of memory-cgroup OOM kills, read from ``/dev/kmsg``.

The engine learns of an OOM kill from containerd, which watches each
container's memory cgroup. When the host is busy, the container can exit and
its cgroup be removed before containerd reads the notification; containerd
then drops the event and the engine never sets ``State.OOMKilled``. The kernel
writes an ``oom-kill:`` record naming the victim's memory cgroup before the
victim dies, so it is the authority when the orchestrator may read the kernel
log (root, or ``CAP_SYSLOG`` where ``kernel.dmesg_restrict`` is set).

:class:`KernelOomLog` keeps one non-blocking descriptor open and, on each
question, reads only the records written since the last one, remembering the
container ids seen in ``oom_memcg=`` / ``task_memcg=`` fields (a bounded set).
"""

from __future__ import annotations

import errno
import os
import re
import threading
from collections import OrderedDict

__all__ = ["KernelOomLog", "oom_cgroup_ids"]

_KMSG = "/dev/kmsg"
# docker's cgroup names: cgroupfs ".../docker/<id>", systemd ".../docker-<id>.scope".
_MEMCG = re.compile(r"\b(?:oom_memcg|task_memcg)=\S*?docker[/-]([0-9a-f]{64})\b")
_REMEMBER = 4096


def oom_cgroup_ids(message: str) -> set[str]:
    """Container ids named by one kernel ``oom-kill:`` record (empty for any other record)."""
    if "oom-kill:" not in message:
        return set()
    return set(_MEMCG.findall(message))


class KernelOomLog:
    """Answers "did the kernel OOM-kill a process of this container?" from ``/dev/kmsg``."""

    def __init__(self, path: str = _KMSG) -> None:
        self._path = path
        self._fd: int | None = None
        self._unreadable = False
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()

    def saw_oom(self, cid: str) -> bool | None:
        """True when the kernel logged an OOM kill in ``cid``'s memory cgroup, False when
        it did not, None when the kernel log cannot be read here."""
        with self._lock:
            if not self._drain():
                return None
            return cid in self._seen

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def _drain(self) -> bool:
        if self._unreadable:
            return False
        if self._fd is None:
            try:
                self._fd = os.open(self._path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            except OSError:
                self._unreadable = True
                return False
        while True:
            try:
                record = os.read(self._fd, 8192)
            except BlockingIOError:
                return True
            except OSError as err:
                if err.errno == errno.EPIPE:  # records overwritten since the last read: go on
                    continue
                if err.errno == errno.EAGAIN:
                    return True
                os.close(self._fd)
                self._fd = None
                self._unreadable = True
                return False
            if not record:
                return True
            # /dev/kmsg gives one record per read; a plain file (tests) gives many lines.
            for line in record.decode("utf-8", "replace").splitlines():
                _, _, message = line.partition(";")
                for cid in oom_cgroup_ids(message):
                    self._seen[cid] = None
                    self._seen.move_to_end(cid)
                    while len(self._seen) > _REMEMBER:
                        self._seen.popitem(last=False)
