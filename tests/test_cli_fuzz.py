"""Seeded fuzzing of every command line with hostile input: bad numeric flags, crafted bitstreams
(every CRC recomputed), hostile checkpoints, images too large or not images, deep / huge / binary
JSON and YAML, malformed manifests, bad URLs, and outputs gzip refuses (an existing file, the input
itself, a FIFO, a device, a folder).

Every case must end in exit code 2 with exactly one line on stderr (no traceback, not the
last-resort "unexpected" line), leave every file of its folder as it was (no output, no temporary
file, inputs untouched), and stay within generous time and memory bounds. Most cases run in this
process (fast); a seeded sample runs in fresh processes under ``prlimit --as`` (address-space cap),
one batch through each command's ``main`` and a few through ``python -m lic_core``.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import random
import re
import resource
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path
from typing import Callable

import pytest
import torch
from PIL import Image

from lic_core.coding import bitstream, codec
from lic_core.errors import INTERNAL
from lic_core.models.hpcm import hpcm, save_checkpoint
from lic_core.paths import REPO

from test_codec import forge, image
from test_codec_fuzz import _mutate as _mutated  # random byte edits without a CRC fix

SEED = 20261205
CASES = 330  # in this process
SAMPLE = 40  # of them again in one fresh process under prlimit
CASE_TIMEOUT_S = 120  # a hang guard, not a speed claim
PEAK_GROWTH_MB = 1536
ADDRESS_SPACE = 6 << 30  # prlimit --as for the subprocesses (torch alone maps ~3 GiB)

MAINS = {
    "info": "lic_core.cli:info_main", "compress": "lic_core.cli:compress_main",
    "decompress": "lic_core.cli:decompress_main", "train": "lic_core.training.engine:main",
    "eval": "lic_core.analysis.evaluation:main", "bdrate": "lic_core.analysis.bdrate:main",
    "anchors": "lic_core.analysis.anchors:main", "datasets": "lic_core.datasets:main",
    "sweep": "lic_core.workbench.sweep:main", "toy": "lic_core.optim.toy:main",
    "conformance": "lic_core.analysis.conformance:main", "demo": "lic_core.workbench.demo:main",
    "study": "studies.trunk_branch:main", "lic_core": "lic_core.__main__:main",
}


def _main(name: str) -> Callable[[list[str]], int]:
    import importlib

    module, func = MAINS[name].split(":")
    return getattr(importlib.import_module(module), func)


# -- the hostile files ----------------------------------------------------------------------------
def _png_claiming(path: Path, width: int, height: int) -> Path:
    """A 1x1 PNG whose header claims ``width`` x ``height`` (CRC fixed): Pillow reads the size, and
    only decoding would find the data missing."""
    buf = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buf, format="PNG")
    raw = bytearray(buf.getvalue())
    ihdr = 8 + 8  # signature, then length + type of the first chunk
    raw[ihdr : ihdr + 8] = struct.pack(">II", width, height)
    raw[ihdr + 13 : ihdr + 17] = struct.pack(">I", zlib.crc32(bytes(raw[ihdr - 4 : ihdr + 13])))
    path.write_bytes(bytes(raw))
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    w = tmp_path_factory.mktemp("hostile")
    Image.new("RGB", (20, 30), (200, 30, 90)).save(w / "in.png")
    Image.new("RGB", (1, 1), (3, 4, 5)).save(w / "one.png")
    (w / "onedir").mkdir()
    Image.new("RGB", (1, 1)).save(w / "onedir" / "a.png")
    _png_claiming(w / "huge.png", 12000, 12000)
    Image.new("RGB", (65536, 1)).save(w / "wide.png")
    (w / "text.png").write_text("not an image")
    rng = random.Random(SEED)
    (w / "binary").write_bytes(rng.randbytes(3000))
    os.mkfifo(w / "fifo")
    (w / "afile").write_text("x")
    (w / "exists.out").write_bytes(b"keep me")
    # checkpoints
    model = codec.synthetic_weights(hpcm("tiny"))
    save_checkpoint(model, w / "w.pt")
    (w / "garbage.pt").write_bytes(rng.randbytes(500))
    torch.save({1: 2}, w / "intkeys.pt")
    torch.save([1, 2, 3], w / "list.pt")
    torch.save({"config": {"name": "tiny", "M": 10**30}, "state_dict": {}}, w / "hugecfg.pt")
    for name, scale in (("huge_weights.pt", 1e30), ("big_means.pt", None)):
        m = hpcm("tiny")
        with torch.no_grad():
            if scale is None:
                m.means_hyper.fill_(1e9)
            else:
                for p in m.parameters():
                    p.mul_(scale)
        save_checkpoint(m, w / name)
    (w / "truncated.pt").write_bytes((w / "w.pt").read_bytes()[:2000])
    # bitstreams
    stream = codec.compress(model, image(20, 30, seed=20))
    (w / "good.hpcm").write_bytes(stream)
    (w / "v3.hpcm").write_bytes(codec.encode(model, image(20, 30, seed=20), version=3).data)
    (w / "untrained.hpcm").write_bytes(codec.compress(hpcm("tiny"), image(20, 30, seed=20)))
    # text files
    texts = {
        "deep.json": "[" * 100000, "deepobj.json": '{"a":' * 50000 + "1" + "}" * 50000,
        "string.json": '"abc"', "hugeint.json": '{"results": {"bpp": [1' + "0" * 5000 + ', 2], "psnr-rgb": [1, 2]}}',
        "strings.json": '{"results": {"bpp": ["a", "b"], "psnr-rgb": [30, 31]}}',
        "nested.json": '{"results": {"bpp": [[1], [2, 3]], "psnr-rgb": [30, 31]}}',
        "nobpp.json": '{"results": {"psnr-rgb": [30, 31]}}',
        "deep.yaml": "a: " + "[" * 5000 + "]" * 5000 + "\n",
        "deepmap.yaml": "".join("  " * i + f"k{i}:\n" for i in range(200)) + "  " * 200 + "v: 1\n",
        "hugeint.yaml": "run:\n  steps: 1" + "0" * 5000 + "\n",
        "bigint.yaml": "run:\n  steps: 1" + "0" * 40 + "\n",
        "list.yaml": "- 1\n- 2\n", "syntax.yaml": "loss: [1, 2\nrun: 3\n",
        "alias.yaml": "a: &a [" + ", ".join(["x"] * 50) + "]\n" + "".join(f"b{i}: &b{i} [*{'a' if i == 0 else f'b{i - 1}'}, *{'a' if i == 0 else f'b{i - 1}'}]\n" for i in range(40)),
    }
    for name, text in texts.items():
        (w / name).write_text(text)
    (w / "nonutf8.yaml").write_bytes(b"run:\n  name: \xff\xfe\x00\n")
    (w / "nonutf8.json").write_bytes(b'{"name": "\xff\xfe"}')
    # malformed stores
    for name, manifest in (("store_badline", "not a manifest line\n"), ("store_badhash", "zz  a.pt\n"),
                           ("store_binary", rng.randbytes(200)), ("store_dotdot", "a" * 64 + "  ../../etc/passwd\n")):
        (w / name).mkdir()
        (w / name / "SHA256SUMS").write_bytes(manifest if isinstance(manifest, bytes) else manifest.encode())
        (w / name / "index.json").write_text("{}")
    (w / "out").mkdir()
    return w


def _crafted(rng: random.Random, stream: bytes) -> bytes:
    """A bitstream edit behind a recomputed CRC that must be refused (never one that changes no
    coded symbol, such as another height within the same padding)."""
    hdr = bitstream.read_header(stream)
    parts = bitstream.split_streams(stream, hdr)
    k = rng.choice(bitstream.STREAMS)
    edits = [
        lambda: forge(stream, fingerprint=rng.randbytes(8)),
        lambda: forge(stream, height=rng.choice([4096, 65535, 0, 1 << 20])),
        lambda: forge(stream, width=rng.choice([4096, 65535, 0])),
        lambda: forge(stream, version=rng.choice([0, 5, 255])),
        lambda: forge(stream, precision=rng.choice([0, 16, 255])),
        lambda: forge(stream, config=b"[" * rng.randint(1000, 30000)),
        lambda: forge(stream, config=b'{"name":"tiny","aligned_s2_gather":{}}'),
        lambda: forge(stream, config=b'{"name":"tiny","windows":[64,64,64]}', height=1, width=1),
        lambda: forge(stream, config=b'{"name":"tiny","windows":[63,61,59]}'),
        lambda: forge(stream, config=b'{"name":"x","M":1024,"N":1024,"widths":[1024,48,64],"depths":[10,1,1],'
                                     b'"hyper_blocks":[1,1,1,1],"prior_s12":[1,1],"prior_s3":[1,1],"heads":8,'
                                     b'"windows":[2,4,8],"aligned_s2_gather":false,"seed":0}'),
        lambda: forge(stream, config=b'{"name":"\\u001b[31mred\\u0007"}'),
        lambda: forge(stream, config=b'{"name":"tiny","M":1' + b"0" * 5000 + b"}"),
        lambda: forge(stream, config=rng.randbytes(rng.randint(1, 200))),
        lambda: forge(stream, config=b'{"name":"base"}'),
        lambda: forge(stream, checks=(hdr.checks[0] ^ 1, hdr.checks[1])),
        lambda: forge(stream, streams={k: b""}),
        lambda: forge(stream, streams={k: parts[k][: rng.randrange(len(parts[k]))]}),
        lambda: forge(stream, streams={k: parts[k] + rng.randbytes(rng.randint(1, 64))}),
        lambda: forge(stream, streams={k: bytes(len(parts[k]))}),
    ]
    return rng.choice(edits)()


# -- the cases ------------------------------------------------------------------------------------
BAD_INTS = ["-5", "0", "-1", "abc", "1e3", "2**40", "1099511627776", "1" + "0" * 5000, "", "0x10", "nan", "٣"]


def cases(world: Path, n: int, seed: int = SEED) -> list[tuple[str, list[str]]]:
    """``n`` seeded (command, argv) cases, every command and category covered."""
    rng = random.Random(seed)
    w = lambda name: str(world / name)  # noqa: E731
    out = lambda ext="out": str(world / "out" / f"o{rng.randrange(10**6)}.{ext}")  # noqa: E731
    stream = (world / "good.hpcm").read_bytes()
    made = [0]

    def bitfile(data: bytes) -> str:
        made[0] += 1
        p = world / "streams" / f"c{made[0]}.hpcm"
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(data)
        return str(p)

    ckpts = ["garbage.pt", "intkeys.pt", "list.pt", "hugecfg.pt", "huge_weights.pt", "big_means.pt", "truncated.pt",
             "missing.pt", "binary", "afile", "onedir"]
    yamls = ["deep.yaml", "deepmap.yaml", "hugeint.yaml", "bigint.yaml", "nonutf8.yaml", "list.yaml", "syntax.yaml",
             "binary", "missing.yaml", "onedir", "alias.yaml"]
    jsons = ["deep.json", "deepobj.json", "string.json", "hugeint.json", "strings.json", "nested.json", "nobpp.json",
             "nonutf8.json", "binary", "missing.json", "onedir"]
    bad_outputs = [w("exists.out"), w("fifo"), w("onedir"), "/dev/null", w("afile") + "/x.out"]
    gens: list[Callable[[], tuple[str, list[str]]]] = [
        lambda: ("info", ["tiny", "--size", rng.choice(BAD_INTS + ["100"]), "128"]),
        lambda: ("info", ["tiny", "--size", "128", rng.choice(["130", "-128", "131072", "65536"])]),
        lambda: ("info", ["--checkpoint", w(rng.choice([c for c in ckpts if c not in ("huge_weights.pt", "big_means.pt")]))]),
        lambda: ("info", ["--size", "128", "128"]),
        lambda: ("compress", [w("in.png"), out(), "--quality", rng.choice(BAD_INTS + ["99"])]),
        lambda: ("compress", [w("in.png"), out(), "--max-pixels", rng.choice(BAD_INTS)]),
        lambda: ("compress", [w(rng.choice(["text.png", "binary", "missing.png", "onedir", "fifo", "huge.png",
                                            "wide.png"])), out()]),
        lambda: ("compress", [w("in.png"), rng.choice(bad_outputs + [w("in.png")])]
                 + rng.choice([[], ["-f"]]) + ["--untrained"]),
        lambda: ("compress", [w("in.png"), out(), "--checkpoint", w(rng.choice(ckpts))]),
        lambda: ("compress", [w("in.png"), out(), rng.choice(["--quality", "--untrained"]), "2", "--checkpoint", w("w.pt")]
                 if rng.random() < 0.5 else [w("in.png"), out(), "--model", "base"]),
        lambda: ("compress", [w("one.png"), out(), "--untrained", "--max-pixels", "100"]),
        lambda: ("decompress", [bitfile(_crafted(rng, stream)), out("png"), "--checkpoint", w("w.pt")]),
        lambda: ("decompress", [bitfile(_mutated(rng, stream)), out("png"), "--checkpoint", w("w.pt")]),
        lambda: ("decompress", [bitfile(_crafted(rng, stream)), out("png")] + rng.choice([[], ["--untrained"]])),
        lambda: ("decompress", [w(rng.choice(["good.hpcm", "v3.hpcm"])), out("png")]),
        lambda: ("decompress", [w("good.hpcm"), out("png"), "--checkpoint", w(rng.choice(ckpts + ["in.png"]))]),
        lambda: ("decompress", [w("good.hpcm"), out("png"), "--max-pixels", rng.choice(BAD_INTS)]),
        lambda: ("decompress", [w("good.hpcm"), rng.choice(bad_outputs + [w("good.hpcm")]), "--checkpoint", w("w.pt")]),
        lambda: ("decompress", [w(rng.choice(["binary", "text.png", "missing.hpcm", "onedir", "fifo"])), out("png")]),
        lambda: ("decompress", [w("good.hpcm"), out("png"), "--checkpoint", w("w.pt"), "--reference",
                                w(rng.choice(["one.png", "text.png", "huge.png", "missing.png"]))]),
        lambda: ("decompress", [w("untrained.hpcm"), out("png"), "--untrained", "--checkpoint", w("w.pt")]),
        lambda: ("train", ["--config", w(rng.choice(yamls))]),
        lambda: ("train", ["--set", rng.choice(["loss.lmbda", "nokey", "=", "run.steps"])]),
        lambda: ("eval", ["--model", "tiny", "--dataset", rng.choice([w("onedir"), w("missing")]), "--out", out("d")]),
        lambda: ("eval", ["--model", "tiny", "--dataset", w("onedir"), "--out", out("d"),
                          rng.choice(["--crop", "--limit", "--threads"]), rng.choice(BAD_INTS[:8])]),
        lambda: ("eval", ["--checkpoint", w(rng.choice(ckpts)), "--dataset", w("onedir"), "--out", out("d")]),
        lambda: ("bdrate", [w(rng.choice(jsons)), w(rng.choice(jsons))]),
        lambda: ("bdrate", [w("nobpp.json"), w("nobpp.json"), "--min-overlap", rng.choice(["nan", "-1", "2", "abc", "inf"])]),
        lambda: ("anchors", ["--codec", "jpeg", "--dataset", w("onedir"), "--out", out("d"),
                             "--crop", rng.choice(["-5", "100000", "abc"])]),
        lambda: ("datasets", ["download", "kodak", "--dest", out("d"), "--url",
                              rng.choice(["notaurl", "ftp://example.org/x", "http://", "javascript:alert(1)", "file:",
                                          "\x1b[31mhttp://x", "://x", ""])]),
        lambda: ("datasets", ["check", rng.choice(["imagenet", "\x1b[2J", ""])]),
        lambda: ("sweep", [w(rng.choice(yamls)), "--dry-run"]),
        lambda: ("toy", ["--out", out("csv"), rng.choice(["--steps", "--lr", "--bogus"]), rng.choice(["abc", "", "1e"])]),
        lambda: ("conformance", ["--parts", rng.choice(["bogus", "\x1b[31m", "x,y"])]),
        lambda: ("demo", [rng.choice(["--steps", "--limit", "--crop", "--jobs"]), rng.choice(["abc", "", "1.5"])]),
        lambda: ("study", ["verify", w(rng.choice(["store_badline", "store_badhash", "store_binary", "store_dotdot",
                                                   "missing_store"]))]),
        lambda: ("study", ["status", "--study", w(rng.choice(yamls))]),
        lambda: ("lic_core", [rng.choice(["bogus", "\x1b[31mred", "compres"])]),
    ]
    out_cases = [gens[i % len(gens)]() for i in range(len(gens))]  # every generator once
    out_cases += [rng.choice(gens)() for _ in range(n - len(out_cases))]
    return out_cases


# -- running them ---------------------------------------------------------------------------------
def _lines(err: str) -> list[str]:
    r"""stderr's lines as a terminal shows them (a progress bar's ``\r`` rewrites end up as one),
    without a progress bar left standing when the error came."""
    lines = (line.split("\r")[-1].strip() for line in err.split("\n"))
    return [seg for seg in lines if seg and not re.search(r"\d+%\|.*\| \d+/\d+ \[", seg)]


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``folder`` (hidden temporary files too; not folders) with its size and mtime."""
    out = {}
    for p in folder.rglob("*"):
        st = p.lstat()
        if not p.is_dir():
            out[str(p.relative_to(folder))] = (st.st_size, st.st_mtime_ns if p.is_file() else 0)
    return out


def _problem(rc: int, err: str) -> str | None:
    lines = _lines(err)
    if rc != 2:
        return f"exit {rc}"
    if len(lines) != 1:
        return f"{len(lines)} stderr lines"
    if "Traceback" in err or INTERNAL in lines[0]:
        return "not a handled error"
    if "\x1b" in err or "\x07" in err:
        return "raw control characters"
    return None


def _alarm(*_):
    raise TimeoutError("case took too long")


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_inprocess(world: Path, todo: list[tuple[str, list[str]]]) -> list[str]:
    """Run each case through its command's ``main``; the problems found, one string each."""
    problems = []
    old = signal.signal(signal.SIGALRM, _alarm)
    try:
        for i, (name, argv) in enumerate(todo):
            before = _snapshot(world)
            err, outb = io.StringIO(), io.StringIO()
            signal.alarm(CASE_TIMEOUT_S)
            try:
                with contextlib.redirect_stderr(err), contextlib.redirect_stdout(outb):
                    rc = _main(name)(list(argv))
            except SystemExit as e:
                rc = e.code if isinstance(e.code, int) else 1
            except TimeoutError:
                rc = -1
            finally:
                signal.alarm(0)
            why = _problem(rc, err.getvalue())
            after = _snapshot(world)
            changed = sorted(set(after) ^ set(before)) + sorted(k for k in before if k in after and after[k] != before[k])
            changed = [c for c in changed if not c.startswith("streams")]
            if why or changed:
                problems.append(f"case {i} {name} {argv!r}: {why or ''} {changed or ''} {_lines(err.getvalue())[-3:]}")
    finally:
        signal.signal(signal.SIGALRM, old)
    return problems


_RUNNER = """
import contextlib, io, json, sys
sys.path.insert(0, "tests")
from test_cli_fuzz import _main, _problem, _lines
todo = json.load(open(sys.argv[1]))
bad = []
for name, argv in todo:
    err, out = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            rc = _main(name)(argv)
    except SystemExit as e:
        rc = e.code if isinstance(e.code, int) else 1
    why = _problem(rc, err.getvalue())
    if why or "out of memory" in err.getvalue():
        bad.append([name, argv, why, _lines(err.getvalue())[-3:]])
print(json.dumps(bad))
"""


def _prlimit(cmd: list[str]) -> list[str]:
    return ["prlimit", f"--as={ADDRESS_SPACE}", *cmd] if shutil.which("prlimit") else cmd


def test_every_command_fails_hostile_input_in_one_line(world, monkeypatch):
    monkeypatch.delenv("LIC_VERBOSE", raising=False)  # an earlier test's --verbose may have set it
    todo = cases(world, CASES)
    assert len(todo) >= 300 and {name for name, _ in todo} == set(MAINS)
    peak0, t0 = _peak_mb(), time.perf_counter()
    problems = run_inprocess(world, todo)
    wall, grown = time.perf_counter() - t0, _peak_mb() - peak0
    print(f"{len(todo)} hostile cases in-process: {len(problems)} problems, {wall:.0f} s, peak memory +{grown:.0f} MB")
    assert not problems, "\n".join(problems[:20])
    assert grown < PEAK_GROWTH_MB


def test_a_sample_in_fresh_processes_under_an_address_space_cap(world, tmp_path):
    """The same kinds of cases in a new process whose address space prlimit caps: none may need
    more (an allocation refused there would show as 'out of memory'), and the real entry point
    ``python -m lic_core`` prints one line too."""
    sample = cases(world, SAMPLE, seed=SEED + 1)
    (tmp_path / "cases.json").write_text(json.dumps(sample))
    before = _snapshot(world)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    env.pop("LIC_VERBOSE", None)
    run = subprocess.run(_prlimit([sys.executable, "-c", _RUNNER, str(tmp_path / "cases.json")]), cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    assert json.loads(run.stdout.strip().splitlines()[-1]) == []
    rng = random.Random(SEED + 2)
    crafted = world / "streams" / "sub.hpcm"
    crafted.write_bytes(_crafted(rng, (world / "good.hpcm").read_bytes()))
    for argv in (["decompress", str(crafted), str(world / "out" / "s.png"), "--checkpoint", str(world / "w.pt")],
                 ["bdrate", str(world / "deep.json"), str(world / "binary")],
                 ["compress", str(world / "huge.png"), str(world / "out" / "s.hpcm")]):
        real = subprocess.run(_prlimit([sys.executable, "-m", "lic_core", *argv]), cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=600)
        assert _problem(real.returncode, real.stderr) is None, (argv, real.returncode, real.stderr[-2000:])
    after = {k: v for k, v in _snapshot(world).items() if not k.startswith("streams")}
    assert after == {k: v for k, v in before.items() if not k.startswith("streams")}
