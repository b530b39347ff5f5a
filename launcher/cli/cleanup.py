"""``shmalloc cleanup``: the IPC objects of dead runs, and stale kernel
caches."""

from __future__ import annotations

from shmalloc import jitcache, shm
from shmalloc.jitcache import dir_bytes, remove_dir, stale_dirs

from ..vm.qemu import cleanup as cleanup_guests


def add_parser(sub) -> None:
    p = sub.add_parser("cleanup", help="remove IPC objects left behind by dead runs",
                       description="Remove the /dev/shm objects, semaphores and message queues "
                       "of shmalloc runs whose creating process is gone, and stop the QEMU of a "
                       "shmalloc vm whose launcher is gone. Objects and guests of live runs "
                       "are never touched.")
    p.add_argument("--dry-run", action="store_true", help="only list what would be removed")
    p.add_argument("--cache", action="store_true",
                   help="instead: remove the stale compiled kernels under "
                   "$XDG_CACHE_HOME/shmalloc/numba (~/.cache by default): those of other "
                   "sources, numba versions or CPUs, and the old .numba_cache/ of this checkout")
    p.set_defaults(func=cmd_cleanup)


def cmd_cleanup(args) -> int:

    if args.cache:
        return _cleanup_cache(args.dry_run)

    cleanup_guests(dry_run=args.dry_run, say=print)     # shmalloc vm's QEMUs, said first
    removed, live = shm.cleanup(dry_run=args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    for name in removed:
        print(f"{verb} {name}")
    print(f"{verb} {len(removed)} objects of dead runs; "
          f"{len(live)} live run(s) left alone" + (f": {', '.join(live)}" if live else ""))
    return 0


def _cleanup_cache(dry_run: bool) -> int:

    stale = stale_dirs()
    legacy = jitcache.ROOT / ".numba_cache"
    if legacy.is_dir():
        stale.append(legacy)
    verb = "would remove" if dry_run else "removed"
    total = 0
    for path in stale:
        size = dir_bytes(path)
        total += size
        if not dry_run:
            remove_dir(path)
        print(f"{verb} {path} ({size / 2**20:.1f} MiB)")
    keep = "" if jitcache.OVERRIDDEN else f"; kept {jitcache.CACHE_DIR} (this checkout's)"
    print(f"{verb} {len(stale)} stale kernel cache folders, {total / 2**20:.1f} MiB{keep}")
    return 0
