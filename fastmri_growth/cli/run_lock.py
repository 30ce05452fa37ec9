"""One run at a time per run folder: a lock file naming the process that holds it.

Two runs on one ``--default_root_dir`` would overwrite each other's
``last.ckpt`` and write into the same log folder. The training command
takes ``DEFAULT_ROOT_DIR/.fastmri-growth.lock`` before it writes anything
and refuses to start while another live process holds it. The lock is an
``fcntl.flock`` on that file, so the kernel releases it when its holder
dies however it dies (kill -9 included); the file holds the holder's pid
for the message. A lock file left by a process that is gone is taken over,
with a note naming that pid.

Only the launching process locks: DDP ranks that Lightning or ``torchrun``
start (``LOCAL_RANK``/``NODE_RANK``/``RANK`` not 0) belong to the run of
their rank 0.
"""
from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path
from typing import Optional

from fastmri_growth.cli.common import UsageError

#: The lock file's name inside the run folder.
LOCK_NAME = ".fastmri-growth.lock"


def is_launching_process() -> bool:
    """Whether this process starts the run (not a DDP rank started for it)."""
    return all(os.environ.get(name, "0") in ("", "0")
               for name in ("LOCAL_RANK", "NODE_RANK", "RANK", "GROUP_RANK"))


def _read_pid(fd: int) -> Optional[int]:
    try:
        text = os.pread(fd, 64, 0).decode(errors="replace").strip()
        return int(text.split()[0]) if text else None
    except (OSError, ValueError, IndexError):
        return None


class RunLock:
    """The lock of a run folder, held from :meth:`acquire` to :meth:`release`.

    Attributes:
        path: The lock file.
        note: After :meth:`acquire`: a line about a stale lock taken over (or None).
    """

    def __init__(self, root: Path):
        self.root = Path(root)
        self.path = self.root / LOCK_NAME
        self.note: Optional[str] = None
        self._fd: Optional[int] = None
        self._made: list = []  # folders this lock created, deepest first

    def acquire(self) -> "RunLock":
        """Take the lock, creating the run folder if needed.

        Raises:
            UsageError: another live process holds it (naming its pid).
        """
        missing, folder = [], Path(os.path.abspath(self.root))
        while not folder.exists():
            missing.append(folder)
            folder = folder.parent
        self.root.mkdir(parents=True, exist_ok=True)
        self._made = missing
        for _ in range(10):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as err:
                if err.errno in (errno.ENOSPC, errno.EDQUOT):
                    return self  # a full disk: the free-space check refuses the run next
                raise
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pid = _read_pid(fd)
                os.close(fd)
                holder = f"process {pid}" if pid is not None else "another process"
                raise UsageError(
                    f"--default_root_dir {self.root} is in use by another run ({holder} holds "
                    f"{self.path}); wait for it to finish, or pass another --default_root_dir "
                    "(to test its checkpoints meanwhile, pass --ckpt_path FILE with another "
                    "--default_root_dir)"
                ) from None
            # The holder may have removed the file between our open and flock: then
            # we locked a file no other process will see; open the new one.
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            old = _read_pid(fd)
            if old is not None and old != os.getpid():
                self.note = (f"note: took over the lock {self.path} of process {old}, which is "
                             "no longer running")
            try:
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            except OSError:  # a full disk: the flock holds without the pid
                pass
            self._fd = fd
            return self
        raise UsageError(f"cannot lock {self.path}: it is being replaced over and over; "
                         "pass another --default_root_dir")

    def release(self) -> None:
        """Remove the lock file and let go; folders the lock created go too if still empty."""
        if self._fd is None:
            return
        try:
            os.unlink(self.path)  # before unlocking, so no one locks the removed file
        except FileNotFoundError:
            pass
        os.close(self._fd)
        self._fd = None
        for folder in self._made:
            try:
                folder.rmdir()
            except OSError:
                break  # the run wrote into it
        self._made = []

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
