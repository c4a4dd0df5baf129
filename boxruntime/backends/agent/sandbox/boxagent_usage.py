"""What the sandbox uses right now, as its PID 1 sees it (stdlib only, Python >= 3.8).

- CPU: seconds used by every process of the sandbox since it started. The agent is PID 1 and
  reaps every process, so its children's times (``cutime``, ``cstime``) hold whatever has
  ended; the live ones are added from /proc.
- Memory: the resident set of every live process (shared pages count more than once).
- Disk: the file system of the given path (the workspace).
"""

import os

import boxagent_wire as wire


def _times(pid):
    """utime + stime + cutime + cstime of ``pid``, in clock ticks."""
    with open("/proc/%s/stat" % pid, "rb") as f:
        stat = f.read()
    fields = stat[stat.rfind(b")") + 2 :].split()
    return sum(int(v) for v in fields[11:15])


def _rss_pages(pid):
    with open("/proc/%s/statm" % pid, "rb") as f:
        return int(f.read().split()[1])


def usage(header, _body, _roots, _max_bytes):
    me = os.getpid()
    ticks = _times(me)
    pages = _rss_pages(me)
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != me:
            try:
                ticks += _times(entry)
                pages += _rss_pages(entry)
            except (OSError, ValueError, IndexError):
                continue  # ended meanwhile
    reply = {
        wire.Fs.CPU_SEC: ticks / os.sysconf("SC_CLK_TCK"),
        wire.Fs.MEM_BYTES: pages * os.sysconf("SC_PAGE_SIZE"),
    }
    try:
        fs = os.statvfs(header.get(wire.Fs.PATH) or "/")
        reply[wire.Fs.DISK_TOTAL] = fs.f_blocks * fs.f_frsize
        reply[wire.Fs.DISK_USED] = (fs.f_blocks - fs.f_bfree) * fs.f_frsize
    except OSError:
        reply[wire.Fs.DISK_TOTAL] = reply[wire.Fs.DISK_USED] = 0
    return reply, b""
