"""CLI: ``python -m jobs.export --checkpoint DIR --out model.safetensors``: a sharded
checkpoint as one torch ``state_dict`` file.

``--checkpoint`` is a ``checkpoints/round-<r>/`` folder, or a run's ``--out`` folder (its
latest checkpoint). The checkpoint is verified (manifest and file hashes, shapes) and its
shard pieces joined into full tensors by its plan: every parameter, float32, named by the
model's ``state_dict()`` keys, plus the buffers the checkpoint holds; optimizer state is
left out. ``model.load_state_dict(load_file(path))`` then loads it (``strict=False`` when the
checkpoint holds no buffers and the model has some). The file is written atomically; an
existing ``--out`` is replaced only with ``--overwrite``. Each mistake is one line on stderr
with exit 2; ``--debug`` (or ``RAFTPS_DEBUG=1``) shows the traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from jobs.errors import ConfigError
from jobs.train import OneLineParser, debug_requested

PROG = "python -m jobs.export"


def build_parser() -> OneLineParser:
    """The CLI's flags."""
    p = OneLineParser(prog=PROG, description="Write a checkpoint's parameters (and buffers) "
                                             "as one torch state_dict safetensors file.")
    p.add_argument("--checkpoint", required=True,
                   help="a checkpoints/round-<r>/ folder, or a run's --out (its latest)")
    p.add_argument("--out", required=True, help="the safetensors file to write")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    return p


def export(checkpoint: Path, out: Path, *, overwrite: bool = False) -> Path:
    """Write ``checkpoint``'s state dict to ``out`` (see the module doc); returns the file.
    Raises ``ConfigError`` (nothing written) for a checkpoint that is missing or corrupt, or
    an ``out`` that exists without ``overwrite`` or is a folder."""
    from paramserver.checkpoint import checkpoint_state_dict, export_state_dict, find_checkpoint
    from paramserver.errors import CheckpointCorruptError

    found = find_checkpoint(checkpoint)
    if found is None:
        raise ConfigError(f"--checkpoint {checkpoint} holds no checkpoint; pass a "
                          "checkpoints/round-<r>/ folder (one with a manifest.json) or a "
                          "run's --out folder")
    if out.is_dir():
        raise ConfigError(f"--out {out} is a folder; name the file to write, e.g. "
                          f"{out / 'model.safetensors'}")
    if out.exists() and not overwrite:
        raise ConfigError(f"--out {out} exists; pass --overwrite to replace it, or choose "
                          "another --out")
    try:
        tensors = checkpoint_state_dict(found)
    except CheckpointCorruptError as exc:
        raise ConfigError(f"--checkpoint {found}: {exc}") from exc
    out.parent.mkdir(parents=True, exist_ok=True)
    written: Path = export_state_dict(out, tensors)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: export, print where the file is."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        path = export(Path(args.checkpoint), Path(args.out), overwrite=args.overwrite)
    except ConfigError as exc:
        if debug_requested(args.debug):
            raise
        parser.error(str(exc))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
