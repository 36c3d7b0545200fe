"""Decoding on another CPU: files encoded by a process that uses all of this CPU's vector
instructions, decoded by one limited to fewer (as on an AVX2-only or an older machine), and the
reverse. PyTorch's own kernels, oneDNN and MKL each pick their code path by the CPU, so this is what
happens when a file travels between machines.

    python benchmarks/cross_cpu.py --kodak 24 --limits avx2,sse4 \\
        --models checkpoints/tiny/base-l0.0035-s0.pt,checkpoints/tiny/base-l0.025-s0.pt,base@0.7,base@0.8

A model is a checkpoint or ``NAME@FACTOR`` (synthetic weights at that factor, crops of ``--crop``
pixels). Each decode is compared with the encoding process's own decode (which equals the encoder's
image on a CPU) and sorted as identical, "warned" (format version 3's ReconstructionWarning: every
symbol right, pixels apart), "refused" (a BitstreamError) or "silent" (a different image and no
word from the decoder: what format version 3 exists to prevent).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lic_core.coding import codec  # noqa: E402
from lic_core.coding.bitstream import VERSION, WRITABLE  # noqa: E402
from lic_core.errors import BitstreamError, ReconstructionWarning  # noqa: E402
from lic_core.imageio import load_image  # noqa: E402
from lic_core.models.hpcm import hpcm  # noqa: E402
from lic_core.models.loading import load_checkpoint  # noqa: E402
from lic_core.paths import datasets_root  # noqa: E402

# Environment that caps each library's instruction set (read when the library loads)
LIMITS = {
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"},
    "sse4": {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2"},
}
OUTCOMES = ("identical", "warned", "refused", "silent")


def model_of(spec: str, dtype: str = "float32") -> torch.nn.Module:
    if "@" in spec:
        name, factor = spec.split("@")
        model = codec.synthetic_weights(hpcm(name), float(factor))
    else:
        model = load_checkpoint(spec)
    return model.eval().to(getattr(torch, dtype))


def images_of(spec: str, kodak: int, crop: int) -> dict[str, torch.Tensor]:
    paths = sorted((datasets_root() / "kodak").glob("kodim*.png"))[:kodak]
    xs = {p.stem: load_image(p)[0] for p in paths}
    return {k: x[:, :, :crop, :crop] for k, x in xs.items()} if "@" in spec else xs


def _levels(x: torch.Tensor) -> torch.Tensor:
    return (x * 255).round().to(torch.uint8)


def decode_outcome(data: bytes, model: torch.nn.Module, ref: torch.Tensor) -> str:
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ReconstructionWarning)
            out = codec.decompress(data, model)
    except BitstreamError:
        return "refused"
    if torch.equal(_levels(out), _levels(ref)):  # 8-bit levels: the two sides may differ in dtype
        return "identical"
    return "warned" if any(issubclass(w.category, ReconstructionWarning) for w in caught) else "silent"


def worker(a: argparse.Namespace) -> int:
    """In this process's instruction set: encode to ``--encode-to`` (files and their own decode),
    decode ``--decode``'s files and write the outcomes to ``--result``."""
    torch.set_num_threads(a.threads)
    model = model_of(a.model, a.dtype)
    if a.encode_to:
        out = Path(a.encode_to)
        for name, x in images_of(a.model, a.kodak, a.crop).items():
            data = codec.encode(model, x, version=a.version).data
            (out / f"{name}.hpcm").write_bytes(data)
            torch.save(_levels(codec.decompress(data, model)), out / f"{name}.pt")
    if a.decode:
        src = Path(a.decode)
        got = {f.stem: decode_outcome(f.read_bytes(), model, torch.load(src / f"{f.stem}.pt").float() / 255)
               for f in sorted(src.glob("*.hpcm"))}
        Path(a.result).write_text(json.dumps({"capability": torch.backends.cpu.get_cpu_capability(), "images": got}))
    return 0


def run_worker(limit: str, model: str, a: argparse.Namespace, **paths: str) -> None:
    env = {**os.environ, **LIMITS.get(limit, {})}
    args = [sys.executable, __file__, "--worker", "--models", model, "--kodak", str(a.kodak), "--crop", str(a.crop),
            "--threads", str(a.threads), "--version", str(a.version), "--dtype", a.dtype]
    args += [f"--{k.replace('_', '-')}={v}" for k, v in paths.items()]
    subprocess.run(args, env=env, check=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="checkpoints/tiny/base-l0.0035-s0.pt,checkpoints/tiny/base-l0.025-s0.pt")
    ap.add_argument("--limits", default="avx2,sse4", help=f"comma list of {', '.join(LIMITS)}")
    ap.add_argument("--kodak", type=int, default=24)
    ap.add_argument("--crop", type=int, default=256, help="crop side for synthetic-weight models")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--version", type=int, default=VERSION, choices=WRITABLE,
                    help="format version the encoders write (versions 1 and 2 are no longer written; "
                         "benchmarks/results/cross_cpu_xeon_v2.txt holds the version-2 run)")
    ap.add_argument("--dtype", default="float32", choices=("float32", "float64"),
                    help="the models' precision on both sides (float64: far slower on a CPU)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--encode-to", help=argparse.SUPPRESS)
    ap.add_argument("--decode", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        a.model = a.models
        return worker(a)
    limits = a.limits.split(",")
    if set(limits) - set(LIMITS):
        ap.error(f"--limits: choose from {', '.join(LIMITS)}")
    native = torch.backends.cpu.get_cpu_capability()
    print(f"this CPU: {native}; format version {a.version}, {a.dtype}; decodes compared with the encoding "
          f"process's own (identical / warned / refused / silent)")
    print(f"{'model':42} {'encoded on':>10} {'decoded on':>10} " + " ".join(f"{o:>9}" for o in OUTCOMES))
    with tempfile.TemporaryDirectory() as tmp:
        for model in a.models.split(","):
            d = Path(tmp) / str(abs(hash(model)))
            (d / "native").mkdir(parents=True)
            run_worker("", model, a, encode_to=str(d / "native"))
            for limit in limits:
                (d / limit).mkdir()
                run_worker(limit, model, a, encode_to=str(d / limit), decode=str(d / "native"),
                           result=str(d / f"{limit}-decodes-native.json"))
                run_worker("", model, a, decode=str(d / limit), result=str(d / f"native-decodes-{limit}.json"))
                capped = json.loads((d / f"{limit}-decodes-native.json").read_text())["capability"]
                for src, dst, f in ((native, capped, f"{limit}-decodes-native"),
                                    (capped, native, f"native-decodes-{limit}")):
                    got = list(json.loads((d / f"{f}.json").read_text())["images"].values())
                    print(f"{model[-42:]:42} {src:>10} {dst:>10} " + " ".join(f"{got.count(o):9d}" for o in OUTCOMES),
                          flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
