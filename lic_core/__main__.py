"""Command line: ``python -m lic_core COMMAND [args]``.

Each command lives next to the code it drives, as ``main(argv) -> int``; this file only routes.
"""
from __future__ import annotations

import importlib
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    "info": ("lic_core.cli:info_main", "parameters and kMACs/pixel of a model config"),
    "compress": ("lic_core.cli:compress_main", "image -> bitstream file"),
    "decompress": ("lic_core.cli:decompress_main", "bitstream file -> PNG"),
    "train": ("lic_core.training.engine:main", "train from a YAML config (--set k=v overrides)"),
    "eval": ("lic_core.analysis.evaluation:main", "real-bitstream evaluation of checkpoints on an image folder"),
    "bdrate": ("lic_core.analysis.bdrate:main", "BD-rate / BD-PSNR tables against an anchor"),
    "anchors": ("lic_core.analysis.anchors:main", "classical codecs (JPEG, WebP, ...) over a quality sweep"),
    "datasets": ("lic_core.datasets:main", "list / check / download the test sets (Kodak, CLIC, Tecnick)"),
    "sweep": ("lic_core.workbench.sweep:main", "expand a grid YAML into papermill jobs and run them"),
    "toy": ("lic_core.optim.toy:main", "the Balanced R-D toy problem (conformance trajectory as CSV)"),
    "conformance": ("lic_core.analysis.conformance:main", "differences from the reference data (HPCM, entropy model, toy)"),
    "demo": ("lic_core.workbench.demo:main", "the short end-to-end demo (tiny HPCM on CPU)"),
}


def _usage() -> str:
    rows = "\n".join(f"  {name:<11} {help_}" for name, (_, help_) in COMMANDS.items())
    return f"usage: python -m lic_core COMMAND [args]\n\ncommands:\n{rows}\n"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help"}:
        print(_usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        from lic_core.errors import printable

        print(f"lic_core: error: unknown command {printable(name[:60])!r} (python -m lic_core --help lists them)",
              file=sys.stderr)
        return 2
    module, func = COMMANDS[name][0].split(":")
    return int(getattr(importlib.import_module(module), func)(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
