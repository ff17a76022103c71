"""Run a command the way a systemd unit's sandbox would: as a non-root user, under a seccomp
filter that kills the process on any system call outside an allow list.

    /usr/bin/python3 tests/seccomp_exec.py ALLOW_LIST_JSON USER -- COMMAND ...

Run with Debian's /usr/bin/python3, which has python3-seccomp (the project's virtualenv does
not need it). ALLOW_LIST_JSON is a JSON list of system call names (tests/unit_sandbox.py builds
it from a unit file). USER is dropped to when started as root ("-" keeps the current user).
Unknown names are skipped, as systemd skips names the running kernel or libseccomp lack.
"""

from __future__ import annotations

import json
import os
import pwd
import sys


def main(argv: list[str]) -> None:
    allow_file, user, sep, *command = argv
    assert sep == "--" and command, __doc__
    with open(allow_file) as fh:
        allowed = json.load(fh)
    if user != "-" and os.getuid() == 0:
        entry = pwd.getpwnam(user)
        os.setgroups([])
        os.setgid(entry.pw_gid)
        os.setuid(entry.pw_uid)
    import seccomp

    # systemd's default action for a call outside SystemCallFilter= (no SystemCallErrorNumber=).
    flt = seccomp.SyscallFilter(defaction=seccomp.KILL_PROCESS)
    for name in allowed:
        try:
            flt.add_rule(seccomp.ALLOW, name)
        except (RuntimeError, ValueError):
            continue
    flt.load()  # sets no_new_privs first, as NoNewPrivileges=yes does
    os.execvp(command[0], command)


if __name__ == "__main__":
    main(sys.argv[1:])
