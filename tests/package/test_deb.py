"""The Debian package, end to end on this machine (as root): scripts/package builds it as an
operator does (in build-deb/: prefix /usr, Debian's hardening flags, cpack); its name, file
list, conffiles, unit and dependencies are checked (the dependencies against the libraries the
binaries actually load); lintian reports no error and no warning beyond the accepted ones;
apt-get installs it; systemd-analyze verifies the installed units; the installed parexd answers
one request sent by the installed parexctl on a free port; an edited config survives a
reinstall and is what the installed parexd reads without --config; apt-get purges it. The
machine is left as it was even when a step fails: the package, any package apt-get pulled in
for it, the group its postinst made, the daemon and the scratch files are removed in a finally
block (SIGTERM, SIGINT and SIGHUP unwind through it too); then no package the test installed
may be left, and none that was installed before may be gone. An existing parexd install is
never touched (the test fails instead), and a lock keeps two checkouts' package tests from
installing at once.

    python3 test_deb.py --source DIR
Exit 77 (skipped) when not root: installing is the point of the test.
"""

import argparse
import fcntl
import grp
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

# Every file the package ships; a new install rule must be added here, on purpose.
FILES = """
/etc/parexd/parexd.json
/lib/systemd/system/parexd.service
/lib/systemd/system/parexd.socket
/usr/bin/parex-bench
/usr/bin/parexctl
/usr/bin/parexd
/usr/include/parex/adapters/libuv.h
/usr/include/parex/client.h
/usr/include/parex/plugin.h
/usr/lib/libparex.so
/usr/lib/libparex.so.0
/usr/lib/libparex.so.0.1.0
/usr/lib/parexd/example.so
/usr/lib/pkgconfig/parex.pc
/usr/share/doc/parexd/README.md
/usr/share/doc/parexd/changelog.gz
/usr/share/doc/parexd/copyright
/usr/share/doc/parexd/examples/example.c
/usr/share/man/man1/parex-bench.1.gz
/usr/share/man/man1/parexctl.1.gz
/usr/share/man/man5/parexd.json.5.gz
/usr/share/man/man8/parexd.8.gz
/usr/share/parexd/parexd-rules.test.yml
/usr/share/parexd/parexd-rules.yml
""".split()
BINARIES = ["/usr/bin/parexd", "/usr/bin/parexctl", "/usr/bin/parex-bench"]

# lintian tags accepted at warning level, with the README's reasons (Operations, Installing:
# the Debian package). Errors are never accepted.
#   non-standard-file-perm: /etc/parexd/parexd.json ships 0640 (it may hold auth_token), so it
#   is never world-readable, not even between unpack and postinst's stat override.
#   link-to-shared-library-in-wrong-package, package-name-doesnt-match-sonames,
#   pkg-config-unavailable-for-cross-compilation: libparex, its headers and parex.pc ship in
#   this one package (not yet split into libparex0 and libparex-dev).
ACCEPTED_WARNINGS = {"non-standard-file-perm", "link-to-shared-library-in-wrong-package",
                     "package-name-doesnt-match-sonames",
                     "pkg-config-unavailable-for-cross-compilation"}
# Depends beyond the libraries: postinst makes the group parexd with addgroup.
SCRIPT_DEPENDS = {"adduser"}
CONF = "/etc/parexd/parexd.json"
LOCK = "/run/lock/parexd-package-test.lock"

TIMEOUT = 20.0


class Failure(Exception):
    pass


def run(*argv, check=True, env=None, timeout=300):
    p = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout)
    if check and p.returncode != 0:
        raise Failure("%s exited %d:\n%s%s" % (" ".join(argv), p.returncode, p.stdout, p.stderr))
    return p


def expect(cond, what):
    if not cond:
        raise Failure(what)
    print("ok: " + what.split("\n")[0])


def present(pkg):
    """Installed, half-installed or with config files left: anything but not-installed."""
    st = dpkg_status(pkg)
    return len(st) >= 2 and st[1] != "n"


def dpkg_status(pkg):
    """dpkg's two-letter state of pkg ("ii" installed, "rc" config left), "" when unknown."""
    return run("dpkg-query", "-W", "-f", "${db:Status-Abbrev}", pkg,
               check=False).stdout.strip()


def apt(*args, check=True):
    """apt-get, non-interactive, waiting for the dpkg lock another install may hold."""
    e = dict(os.environ)
    e["DEBIAN_FRONTEND"] = "noninteractive"
    return run("apt-get", "-y", "-q", "-o", "DPkg::Lock::Timeout=120", *args, env=e,
               check=check)


def wait_log(path, pattern, proc):
    """Polls the daemon's log for a line (its readiness signal) until TIMEOUT."""
    rx = re.compile(pattern)
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        with open(path, errors="replace") as f:
            m = rx.search(f.read())
        if m:
            return m
        if proc.poll() is not None:
            break
        time.sleep(0.02)  # polling interval, not synchronisation
    with open(path, errors="replace") as f:
        raise Failure("no log line matching %r (exit %r):\n%s" % (pattern, proc.poll(), f.read()))


def library_packages(binaries):
    """The packages holding the shared libraries the binaries name as NEEDED."""
    pkgs = set()
    for b in binaries:
        needed = re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]",
                            run("readelf", "-d", b).stdout)
        paths = dict(re.findall(r"^\s*(\S+) => (\S+)", run("ldd", b).stdout, re.M))
        for soname in needed:
            if soname in set(os.path.basename(f) for f in FILES):
                continue  # libparex: in this package, so no dependency
            path = paths.get(soname)
            if not path:
                raise Failure("%s: ldd does not resolve %s" % (b, soname))
            real = os.path.realpath(path)
            # Debian 12's merged /usr: dpkg knows a library under one of the two spellings.
            for cand in (path, real, re.sub(r"^/usr", "", real), "/usr" + real):
                p = run("dpkg-query", "-S", cand, check=False)
                if p.returncode == 0:
                    pkgs.add(p.stdout.split(":")[0])
                    break
            else:
                raise Failure("%s: no package owns %s" % (b, path))
    return pkgs


def check_package(deb, source, version):
    arch = run("dpkg", "--print-architecture").stdout.strip()
    expect(os.path.basename(deb) == "parexd_%s_%s.deb" % (version, arch),
           "package is named parexd_%s_%s.deb (got %s)" % (version, arch, deb))
    listing = run("dpkg-deb", "-c", deb).stdout.splitlines()
    files = sorted(l.split()[5][1:] for l in listing if not l.split()[5].endswith("/"))
    expect(files == sorted(FILES), "file list is the expected one\n  missing: %s\n  extra: %s" %
           (sorted(set(FILES) - set(files)), sorted(set(files) - set(FILES))))
    owners = set(l.split()[1] for l in listing)
    expect(owners == {"root/root"}, "every file is owned by root/root (got %s)" % owners)

    ctl = tempfile.mkdtemp(prefix="parexd-deb-ctl-")
    try:
        run("dpkg-deb", "-e", deb, ctl)
        with open(os.path.join(ctl, "conffiles")) as f:
            conffiles = f.read().split()
        expect(conffiles == ["/etc/parexd/parexd.json"],
               "/etc/parexd/parexd.json is the one conffile (got %s)" % conffiles)
    finally:
        shutil.rmtree(ctl, True)
    unit = run("sh", "-c", "dpkg-deb --fsys-tarfile '%s' | tar -xOf - "
               "./lib/systemd/system/parexd.service" % deb).stdout
    execs = re.findall(r"^ExecStart=(.*)$", unit, re.M)
    expect(execs == ["/usr/bin/parexd --config /etc/parexd/parexd.json"],
           "the packaged unit starts /usr/bin/parexd with /etc/parexd/parexd.json (got %s)"
           % execs)
    conf = run("sh", "-c", "dpkg-deb --fsys-tarfile '%s' | tar -xOf - ./etc/parexd/parexd.json"
               % deb).stdout
    with open(os.path.join(source, "config", "parexd.json")) as f:
        expect(conf == f.read(), "the packaged config is config/parexd.json")
    with open(os.path.join(source, "config", "debian", "changelog")) as f:
        top = re.match(r"parexd \(([^)]+)\)", f.read())
    expect(top and top.group(1) == version,
           "config/debian/changelog's latest entry is version %s (got %s)"
           % (version, top and top.group(1)))
    return run("dpkg-deb", "-f", deb, "Depends").stdout.strip()


def check_depends(depends):
    names = set(re.sub(r"\s*\(.*\)", "", d).strip() for d in depends.split(","))
    # The libraries are those of the binaries as built (same libraries as in the package).
    want = library_packages(BIN_IN_BUILD) | SCRIPT_DEPENDS
    expect(names == want, "Depends names exactly the packages of the libraries the binaries "
           "load, and adduser: %s\n  Depends: %s" % (sorted(want), depends))
    expect(all("(>=" in d for d in depends.split(",")
               if d.strip() not in SCRIPT_DEPENDS and "libsystemd0" not in d),
           "versioned dependencies from the symbols used (shlibs): %s" % depends)


def check_lintian(deb):
    p = run("lintian", "--info", "--no-tag-display-limit", deb, check=False)
    tags = [l for l in p.stdout.splitlines() if re.match(r"^[EWI]: ", l)]
    errors = [l for l in tags if l.startswith("E:")]
    warnings = [l for l in tags if l.startswith("W:")
                and l.split()[2] not in ACCEPTED_WARNINGS]
    expect(not errors and not warnings,
           "lintian: no error, no warning beyond the accepted ones\n" + "\n".join(tags))
    # scripts/package builds with dpkg-buildflags: no hardening tag, not even at info level.
    hardening = [l for l in tags if " hardening-" in l]
    expect(not hardening, "lintian: the binaries are hardened\n" + "\n".join(hardening))


def exercise_installed(version, scratch):
    out = run("/usr/bin/parexd", "--version").stdout
    expect(out.startswith("parexd %s " % version), "installed parexd --version: " + out.strip())
    log = os.path.join(scratch, "parexd.log")
    with open(log, "w") as f:
        proc = subprocess.Popen(["/usr/bin/parexd", "--config", "/etc/parexd/parexd.json",
                                 "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"],
                                stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT)
    DAEMONS.append(proc)
    m = wait_log(log, r"listening for requests on (\S+), metrics on (\S+)", proc)
    addr, maddr = m.group(1), m.group(2)
    p = run("/usr/bin/parexctl", "send", "--key", "pkg", "--payload", '{"installed":true}',
            "--addr", addr, check=False, timeout=TIMEOUT)
    expect(p.returncode == 0 and '"status":"ok"' in p.stdout and
           '"result":{"installed":true}' in p.stdout,
           "installed parexctl gets the installed parexd's ok answer: %s%s" % (p.stdout, p.stderr))
    p = run("/usr/bin/parexctl", "health", "--metrics-addr", maddr, check=False, timeout=TIMEOUT)
    expect(p.returncode == 0, "installed parexctl health: %s%s" % (p.stdout, p.stderr))
    proc.send_signal(signal.SIGTERM)
    expect(proc.wait(TIMEOUT) == 0, "installed parexd stops on SIGTERM with status 0")
    p = run("systemd-analyze", "verify", "--man=no", "/lib/systemd/system/parexd.service",
            "/lib/systemd/system/parexd.socket", check=False, timeout=60)
    expect((p.returncode, (p.stdout + p.stderr).strip()) == (0, ""),
           "systemd-analyze verify passes the installed units: %s%s" % (p.stdout, p.stderr))
    st = os.stat(CONF)
    expect((oct(st.st_mode & 0o777), grp.getgrgid(st.st_gid).gr_name) == ("0o640", "parexd"),
           "%s is 0640 root:parexd, readable by the unit's SupplementaryGroups (got %s, gid %d)"
           % (CONF, oct(st.st_mode & 0o777), st.st_gid))
    v = run("pkg-config", "--modversion", "parex", check=False)
    libs = run("pkg-config", "--libs", "parex", check=False)
    expect(v.stdout.strip() == version and "-lparex" in libs.stdout.split(),
           "pkg-config finds the installed libparex %s: %s%s" % (v.stdout.strip(), libs.stdout,
                                                                 v.stderr + libs.stderr))
    listed = run("dpkg-query", "-L", "parexd").stdout.split()
    expect(set(FILES) <= set(listed), "dpkg lists every file of the package as installed")


def keep_edited_config(deb):
    """An operator's edit of the conffile survives a reinstall over it (dpkg's upgrade path),
    and the installed parexd reads it when started without --config."""
    conf = "/etc/parexd/parexd.json"
    edited = '{"workers": 3}\n'
    with open(conf, "w") as f:
        f.write(edited)
    apt("install", "--reinstall", "--no-install-recommends", deb)
    with open(conf) as f:
        expect(f.read() == edited, "a reinstall keeps the operator's edited " + conf)
    env = {k: v for k, v in os.environ.items() if k != "PAREXD_CONFIG"}
    p = run("/usr/bin/parexd", "--print-config", env=env, timeout=TIMEOUT)
    workers = json.loads(p.stdout).get("workers")
    expect(workers == 3, "the installed parexd reads %s without --config (workers %s)"
           % (conf, workers))


DAEMONS = []
BIN_IN_BUILD = []


def build_package(source):
    """scripts/package into SOURCE/build-deb (kept between runs, so it rebuilds what changed)."""
    p = run(os.path.join(source, "scripts", "package"), os.path.join(source, "build-deb"),
            timeout=1200)
    deb = p.stdout.strip().splitlines()[-1]
    expect(os.path.isfile(deb), "scripts/package built " + deb)
    return deb, os.path.dirname(deb)


def on_signal(signum, frame):
    raise Failure("interrupted by signal %d" % signum)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--source", required=True)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("skipped: the package test installs into this machine and needs root")
        return 77
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)
    source = os.path.abspath(args.source)
    scratch = tempfile.mkdtemp(prefix="parexd-deb-")
    failed = None
    ours = []  # packages our apt-get install added: parexd and any dependency it pulled in
    state = None
    try:
        deb, build = build_package(source)
        BIN_IN_BUILD.extend(os.path.join(build, b) for b in ("parexd", "parexctl", "parex-bench"))
        with open(os.path.join(build, "CPackConfig.cmake")) as f:
            version = re.search(r'set\(CPACK_PACKAGE_VERSION "([^"]+)"\)', f.read()).group(1)
        check_depends(check_package(deb, source, version))
        check_lintian(deb)
        # One package test at a time on this machine (other checkouts run theirs too).
        lock = open(LOCK, "w")
        fcntl.flock(lock, fcntl.LOCK_EX)
        state = machine_state()
        refuse_existing_install()
        ours.append("parexd")  # from here on, a parexd on this machine is the test's
        out = apt("install", "--no-install-recommends", deb).stdout
        m = re.search(r"The following NEW packages will be installed:\n((?:  .*\n)+)", out)
        ours.extend(p for p in (m.group(1).split() if m else []) if p != "parexd")
        expect("parexd" in ours, "apt-get installed parexd and %s" % (sorted(set(ours) - {"parexd"})
                                                                       or "nothing else"))
        status = dpkg_status("parexd")
        expect(status == "ii", "apt-get installed parexd (dpkg status %s)" % status)
        exercise_installed(version, scratch)
        keep_edited_config(deb)
        apt("purge", "parexd")
        gone = [p for p in FILES if os.path.lexists(p)] + \
            (["/etc/parexd"] if os.path.lexists("/etc/parexd") else [])
        expect(not gone, "apt-get purge removed every file and /etc/parexd (left: %s)" % gone)
        expect(not statoverride(), "apt-get purge removed the stat override of " + CONF)
    except Failure as e:
        failed = str(e)
    finally:
        for proc in DAEMONS:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        leftovers = cleanup(ours, state) if state else []
        shutil.rmtree(scratch, True)
    if failed:
        print("FAIL: " + failed)
        return 1
    if leftovers:
        print("cleaned up: " + " ".join(leftovers))
    names, had_group = state
    now = installed_names()
    left = [p for p in ours if present(p)]
    expect(not left, "none of the packages the test installed is left: %s" % left)
    expect(not (names - now), "no package that was installed before is gone: %s"
           % sorted(names - now))
    expect(group_exists("parexd") == had_group, "the group parexd is as before the test")
    return 0


def refuse_existing_install():
    """Never touch an existing install: this test would replace and then purge it."""
    for path in ["/etc/parexd", "/lib/systemd/system/parexd.service"] + BINARIES:
        if os.path.lexists(path):
            raise Failure("%s exists on this machine; the package test installs and purges "
                          "parexd, so it runs only where parexd is not installed" % path)
    if dpkg_status("parexd") not in ("", "un"):
        raise Failure("dpkg knows a parexd package here (status %s); the package test "
                      "installs and purges parexd, so it runs only where parexd is not "
                      "installed" % dpkg_status("parexd"))


def machine_state():
    return installed_names(), group_exists("parexd")


def installed_names():
    """Names of the installed packages. Other checkouts on this machine may install packages
    while the test runs, so the test answers only for what it installed itself."""
    out = run("dpkg-query", "-W", "-f", "${Package} ${db:Status-Abbrev}\n").stdout
    return set(l.split()[0] for l in out.splitlines() if l.split()[1:2] == ["ii"])


def statoverride():
    return run("dpkg-statoverride", "--list", CONF, check=False).returncode == 0


def group_exists(name):
    try:
        grp.getgrnam(name)
        return True
    except KeyError:
        return False


def cleanup(ours, state):
    """Purges what the test installed (parexd, whatever apt-get pulled in for it) and the system
    group its postinst made (Debian's purge keeps it); returns what it had to remove."""
    _, had_group = state
    removed = []
    left = [p for p in ours if present(p)]
    if left:
        apt("purge", *left, check=False)
        removed += left
    if statoverride():
        run("dpkg-statoverride", "--remove", CONF, check=False)
        removed.append("stat override of " + CONF)
    if not had_group and group_exists("parexd"):
        run("groupdel", "parexd", check=False)
        removed.append("group parexd")
    return removed


if __name__ == "__main__":
    sys.exit(main())
