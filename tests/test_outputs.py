"""Outputs handled like gzip's: an existing file refused without --force, the input never
overwritten, only regular files (or ``-`` for stdout), a replaced file's mode kept, temporary files
removed on SIGTERM and stale ones cleared by the next write."""
from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time

import pytest
from PIL import Image

from lic_core.atomic import check_output, clear_stale, write_file
from lic_core.cli import compress_main, decompress_main
from lic_core.errors import OutputError
from lic_core.paths import REPO


def test_check_output_refuses_what_gzip_refuses(tmp_path):
    src = tmp_path / "in.png"
    src.write_bytes(b"x")
    os.link(src, tmp_path / "hard.png")
    os.symlink(src, tmp_path / "link.png")
    os.mkfifo(tmp_path / "fifo")
    assert check_output(tmp_path / "new.hpcm", force=False) == tmp_path / "new.hpcm"
    cases = {src: "is the input file", tmp_path / "hard.png": "is the input file", tmp_path / "link.png": "is the input file",
             tmp_path / "fifo": "is a FIFO", tmp_path: "is a folder"}
    for path, match in cases.items():
        with pytest.raises(OutputError, match=match):
            check_output(path, force=True, inputs=[src])
    (tmp_path / "old.hpcm").write_bytes(b"y")
    with pytest.raises(OutputError, match="already exists"):
        check_output(tmp_path / "old.hpcm", force=False)
    with pytest.raises(OutputError, match="character device"):
        check_output("/dev/null", force=True)


def test_a_replaced_file_keeps_its_mode_and_a_new_one_follows_the_umask(tmp_path):
    p = tmp_path / "secret.bin"
    p.write_bytes(b"old")
    p.chmod(0o600)
    write_file(p, b"new")
    assert p.read_bytes() == b"new" and stat.S_IMODE(p.stat().st_mode) == 0o600
    mask = os.umask(0o022)
    os.umask(mask)
    write_file(tmp_path / "fresh.bin", b"1")
    assert stat.S_IMODE((tmp_path / "fresh.bin").stat().st_mode) == 0o666 & ~mask


def test_stale_temporary_files_are_cleared(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    stale = tmp_path / f".out.hpcm.{pid}.abcd1234.tmp"  # its writer is gone
    live = tmp_path / f".out.hpcm.{os.getpid()}.efgh5678.tmp"  # a writer still running
    old = tmp_path / ".out.hpcm.zz9y8x7w.tmp"  # an unnumbered leftover, over an hour old
    young = tmp_path / ".out.hpcm.qq1w2e3r.tmp"
    for p in (stale, live, old, young):
        p.write_bytes(b"partial")
    os.utime(old, (time.time() - 7200,) * 2)
    write_file(tmp_path / "out.hpcm", b"data")
    assert not stale.exists() and not old.exists() and live.exists() and young.exists()
    assert clear_stale(tmp_path / "out.hpcm") == []


_SLOW_WRITER = """
import sys, time
from lic_core.atomic import write_atomic
def slow(f):
    f.write(b"x" * 1000); f.flush(); print("writing", flush=True); time.sleep(60)
write_atomic(sys.argv[1], slow)
"""


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 128 + signal.SIGTERM), (signal.SIGINT, None)])
def test_a_signal_while_writing_removes_the_temporary_file(tmp_path, sig, code):
    # a suite started in the background inherits an ignored SIGINT, and Python then installs no
    # KeyboardInterrupt handler: the writer gets the default disposition, as in a terminal
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_WRITER, str(tmp_path / "out.bin")], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert proc.stdout.readline().strip() == "writing"
    assert len(list(tmp_path.glob(".out.bin.*.tmp"))) == 1
    proc.send_signal(sig)
    proc.wait(timeout=60)
    assert proc.returncode != 0 and (code is None or proc.returncode == code)
    assert list(tmp_path.iterdir()) == []


def test_the_command_line_refuses_overwrites_and_writes_stdout(tmp_path, capsysbinary):
    Image.new("RGB", (9, 7), (20, 130, 90)).save(tmp_path / "in.png")
    src = str(tmp_path / "in.png")
    before = (tmp_path / "in.png").read_bytes()
    assert compress_main([src, src, "--untrained", "-f"]) == 2
    assert b"is the input file" in capsysbinary.readouterr().err and (tmp_path / "in.png").read_bytes() == before
    (tmp_path / "w.pt").write_bytes(b"weights")
    assert compress_main([src, str(tmp_path / "w.pt"), "--checkpoint", str(tmp_path / "w.pt"), "-f"]) == 2
    assert b"is the input file" in capsysbinary.readouterr().err and (tmp_path / "w.pt").read_bytes() == b"weights"
    (tmp_path / "w.pt").unlink()
    assert compress_main([src, str(tmp_path / "a.hpcm"), "--untrained"]) == 0
    capsysbinary.readouterr()
    assert compress_main([src, "-", "--untrained"]) == 0  # the file to stdout, the report to stderr
    out = capsysbinary.readouterr()
    assert out.out == (tmp_path / "a.hpcm").read_bytes() and b"bpp" in out.err
    (tmp_path / "o.png").write_bytes(b"keep")
    (tmp_path / "o.png").chmod(0o640)
    assert decompress_main([str(tmp_path / "a.hpcm"), str(tmp_path / "o.png"), "--untrained"]) == 2
    assert (tmp_path / "o.png").read_bytes() == b"keep"
    capsysbinary.readouterr()
    assert decompress_main([str(tmp_path / "a.hpcm"), str(tmp_path / "o.png"), "--untrained", "--force"]) == 0
    assert (tmp_path / "o.png").read_bytes()[:4] == b"\x89PNG" and stat.S_IMODE((tmp_path / "o.png").stat().st_mode) == 0o640
    capsysbinary.readouterr()
    assert decompress_main([str(tmp_path / "a.hpcm"), "-", "--untrained"]) == 0
    assert capsysbinary.readouterr().out == (tmp_path / "o.png").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.hpcm", "in.png", "o.png"]


def test_the_command_line_pipes_an_image_through_stdin_and_stdout(tmp_path):
    """``compress - -`` reads the image from a pipe: the same file as from its path; garbage on
    stdin is refused in one line that names stdin."""
    Image.new("RGB", (19, 13), (200, 30, 90)).save(tmp_path / "in.png")
    png = (tmp_path / "in.png").read_bytes()
    run = lambda args, data: subprocess.run([sys.executable, "-m", "lic_core", *args], input=data,  # noqa: E731
                                            capture_output=True, timeout=300, cwd=REPO)
    piped = run(["compress", "-", "-", "--untrained"], png)
    assert piped.returncode == 0 and b"stdin (19x13)" in piped.stderr
    assert run(["compress", str(tmp_path / "in.png"), str(tmp_path / "a.hpcm"), "--untrained"], b"").returncode == 0
    assert piped.stdout == (tmp_path / "a.hpcm").read_bytes()
    bad = run(["compress", "-", str(tmp_path / "b.hpcm"), "--untrained"], b"not an image")
    assert bad.returncode != 0 and b"stdin: not an image this tool can read" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1 and not (tmp_path / "b.hpcm").exists()


def test_without_force_a_file_that_appears_while_writing_is_kept(tmp_path):
    """The existence check at the start is not enough: the final step refuses a file made since."""
    from lic_core.atomic import write_atomic

    out = tmp_path / "out.hpcm"

    def racing(f):
        f.write(b"ours")
        out.write_bytes(b"someone else's")  # another job's result, written meanwhile

    with pytest.raises(OutputError, match=r"already exists .*appeared while"):
        write_atomic(out, racing, force=False)
    assert out.read_bytes() == b"someone else's" and sorted(p.name for p in tmp_path.iterdir()) == ["out.hpcm"]
    assert write_file(tmp_path / "new.hpcm", b"x", force=False).read_bytes() == b"x"


def test_the_shipped_models_and_an_exact_spec_are_never_outputs(tmp_path, capsysbinary):
    """Without --checkpoint the model comes from the store: no file of it is an output, even with -f;
    the --exact-spec being read is protected like the input."""
    from lic_core.workbench import store

    Image.new("RGB", (9, 7), (20, 130, 90)).save(tmp_path / "in.png")
    target = sorted(store.SHIPPED.glob("*.pt"))[0]
    before = target.stat().st_mtime_ns
    assert compress_main([str(tmp_path / "in.png"), str(target), "-f"]) == 2
    assert b"is in the shipped model store" in capsysbinary.readouterr().err and target.stat().st_mtime_ns == before
    (tmp_path / "spec.json").write_text("{}")
    assert compress_main([str(tmp_path / "in.png"), str(tmp_path / "spec.json"), "-f", "--untrained",
                          "--exact-spec", str(tmp_path / "spec.json")]) == 2
    assert b"is the input file" in capsysbinary.readouterr().err and (tmp_path / "spec.json").read_text() == "{}"
