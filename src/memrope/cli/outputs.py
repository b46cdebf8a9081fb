"""``memrope generate`` owning its outputs: locks, files killed runs left, checkpoints kept or resumed,
and the fingerprints of the weights a checkpoint was made with."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from memrope.cli.console import _note
from memrope.cli.files import COPY_PIECE_BYTES
from memrope.cli.generate_plan import Plan, Video
from memrope.errors import EXIT_FAILURE, CLIError

__all__ = ["RUN_FORMAT", "OutputLock", "_check_weights", "_locked", "_prepare_videos", "_weights_fingerprint"]

RUN_FORMAT = "memrope.generate_run"


class OutputLock:
    """Exclusive ownership of one video's outputs: ``fcntl.flock`` on ``.<video>.lock`` holding the pid.

    The kernel drops the lock when its process dies, so a lock file left by a killed run is simply
    taken over. The file is removed on :meth:`release`; an acquirer that locked a file removed in the
    meantime notices (the inode changed) and tries again.
    """

    def __init__(self, path: Path, output: Path) -> None:
        self.path = path
        self.output = output
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock, or raise :class:`CLIError` naming the pid of the run that holds it."""
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as error:
                raise CLIError(
                    f"cannot create the lock file {self.path}: {error.strerror}", EXIT_FAILURE
                ) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise CLIError(
                    f"{self.output} is being written by another memrope run (pid {owner}, lock {self.path}); "
                    "wait for it to finish or choose another --output",
                    EXIT_FAILURE,
                ) from None
            try:
                current = os.stat(self.path)
            except FileNotFoundError:
                current = None
            if current is not None and os.path.samestat(current, os.fstat(fd)):
                break
            os.close(fd)  # released and removed between open and flock: lock the new file
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        self.path.unlink(missing_ok=True)  # while still locked: see acquire()
        os.close(self._fd)
        self._fd = None


@contextmanager
def _locked(videos: list[Video]) -> Iterator[None]:
    """Hold the lock of every video (all or none) for the block."""
    with ExitStack() as stack:
        for video in videos:
            lock = OutputLock(video.lock, video.output)
            lock.acquire()
            stack.callback(lock.release)
        yield


def _leftovers(video: Video) -> list[Path]:
    """Temporary files of earlier runs of ``video`` (killed, so never removed); only ours match."""
    from memrope.video import Mp4Writer

    found = Mp4Writer.partial_files(video.output)
    targets = [video.output, video.report, video.state, video.run_file, video.attention_stats]
    if video.latents_path is not None:
        targets.append(video.latents_path)
    patterns = [
        (target, re.compile(rf"\.{re.escape(target.name)}\.[a-z0-9_]{{8}}\.tmp")) for target in targets
    ]
    patterns.append(
        (video.output, re.compile(rf"\.{re.escape(video.output.name)}\.[0-9a-f]{{8}}\.latents\.tmp"))
    )
    for target, pattern in patterns:
        try:
            names = os.listdir(target.parent)
        except OSError:
            continue
        found.extend(target.with_name(name) for name in names if pattern.fullmatch(name))
    return sorted(set(found))


def _prepare_videos(plan: Plan) -> None:
    """Under the locks: remove what killed runs left, and decide what each video does.

    A checkpoint is kept unless ``--restart`` says otherwise: without ``--resume`` its existence
    stops the run (forgetting ``--resume`` must not wipe hours of progress).
    """
    for video in plan.videos:
        leftovers = _leftovers(video)
        if not video.state.exists():  # a log or run file without a checkpoint cannot be resumed
            leftovers += [path for path in (video.latents_log, video.run_file) if path.exists()]
        for path in leftovers:
            path.unlink(missing_ok=True)
        if leftovers:
            _note(
                f"removed {len(leftovers)} file(s) an interrupted run left: {', '.join(p.name for p in leftovers)}"
            )
        if plan.restart:
            removed = [path for path in (video.state, video.latents_log, video.run_file) if path.exists()]
            for path in removed:
                path.unlink()
            if removed:
                _note(
                    f"--restart: removed the checkpoint of {video.output} ({', '.join(p.name for p in removed)})"
                )
        elif plan.resume:
            video.action = _check_resume_file(video, plan)
        elif video.state.exists():
            raise CLIError(
                f"{video.output} has the checkpoint {video.state} of an interrupted run"
                f"{_checkpoint_frames(video)}; add --resume to continue it, or --restart to discard it "
                "and start over"
            )


# --------------------------------------------------------------------------------------------------
# memrope generate: loading


def _check_resume_file(video: Video, plan: Plan) -> str:
    """What to do with ``video`` under ``--resume``: ``"resume"``, ``"skip"`` or ``"fresh"``."""
    signature = plan.signature(video)
    if video.state.exists():
        try:
            saved = json.loads(video.run_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raise CLIError(
                f"cannot resume {video.output}: {video.run_file} is missing or unreadable; "
                "pass --restart instead of --resume to start over"
            ) from None
        if (
            not isinstance(saved, dict)
            or saved.get("format") != RUN_FORMAT
            or not isinstance(saved.get("signature"), dict)
        ):
            raise CLIError(
                f"cannot resume {video.output}: {video.run_file} is not a memrope run file; "
                "pass --restart instead of --resume to start over"
            )
        differences = [
            f"{name}: checkpoint {saved['signature'].get(name)!r}, now {value!r}"
            for name, value in signature.items()
            if saved["signature"].get(name) != value
        ]
        if differences:
            raise CLIError(
                f"cannot resume {video.output}: the checkpoint {video.state} was written with other "
                f"settings ({'; '.join(differences)}); rerun with the same arguments or pass --restart "
                "instead of --resume to start over"
            )
        if not video.latents_log.is_file():
            raise CLIError(
                f"cannot resume {video.output}: its latents log {video.latents_log} is missing, so the "
                "frames made so far cannot be decoded again; pass --restart instead of --resume to start over"
            )
        video.run_info = saved
        return "resume"
    if video.output.exists() and video.report.exists():
        try:
            report = json.loads(video.report.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return "fresh"
        if isinstance(report, dict) and report.get("complete") and report.get("signature") == signature:
            return "skip"
    return "fresh"


def _checkpoint_frames(video: Video) -> str:
    """``' at latent frame N of M'`` from the checkpoint's metadata (its header only), else ``''``."""
    from safetensors import safe_open

    try:
        with safe_open(os.fspath(video.state), framework="pt") as handle:
            metadata = handle.metadata() or {}
        for text in metadata.values():
            meta = json.loads(text)
            if isinstance(meta, dict) and "start_frame" in meta and "num_frames" in meta:
                return f" at latent frame {int(meta['start_frame'])} of {int(meta['num_frames'])}"
    except Exception:  # noqa: BLE001,S110 (only a detail of the message; the refusal stands anyway)
        pass
    return ""


#: A weight file's fingerprint hashes it whole up to this size, else this many evenly spaced pieces.
FINGERPRINT_PIECES = 16
FINGERPRINT_PIECE_BYTES = 2**20


def _file_fingerprint(path: Path) -> dict[str, Any]:
    """``{"size", "blake2b"}`` of a file: the hash covers the whole file when it is at most 16 MiB,
    else 16 evenly spaced 1 MiB pieces (the first and the last included), so a multi-GB checkpoint
    costs milliseconds; any change of size, or of contents in those pieces, shows."""
    size = path.stat().st_size
    digest = hashlib.blake2b(digest_size=32)
    with open(path, "rb") as file:
        if size <= FINGERPRINT_PIECES * FINGERPRINT_PIECE_BYTES:
            for piece in iter(lambda: file.read(COPY_PIECE_BYTES), b""):
                digest.update(piece)
        else:
            last = size - FINGERPRINT_PIECE_BYTES
            for index in range(FINGERPRINT_PIECES):
                file.seek(last * index // (FINGERPRINT_PIECES - 1))
                digest.update(file.read(FINGERPRINT_PIECE_BYTES))
    return {"size": size, "blake2b": digest.hexdigest()}


def _weights_fingerprint(plan: Plan) -> list[dict[str, Any]]:
    """Fingerprints of the weight files (``[]`` for the tiny model's built-in seeded weights)."""
    entries = []
    for role, path in plan.weight_files:
        files = [path] if path.is_file() else sorted(file for file in path.rglob("*") if file.is_file())
        for file in files:
            name = file.name if file == path else str(file.relative_to(path))
            entries.append({"role": role, "path": str(path), "file": name, **_file_fingerprint(file)})
    return entries


def _check_weights(video: Video, weights: list[dict[str, Any]]) -> None:
    """Refuse to resume ``video`` with weights other than those its checkpoint was made with."""
    saved = (video.run_info or {}).get("weights")
    if saved is None:
        _note(
            f"{video.run_file} records no weights fingerprint (an older memrope); the weights are not checked"
        )
        return
    if saved == weights:
        return
    before = {(entry.get("role"), entry.get("file")): entry for entry in saved if isinstance(entry, dict)}
    now = {(entry["role"], entry["file"]): entry for entry in weights}
    differences = []
    for key in sorted(before.keys() | now.keys(), key=str):
        old, new = before.get(key), now.get(key)
        label = f"{key[0]} {key[1]}"
        if old is None or new is None:
            differences.append(f"{label}: {'new' if old is None else 'gone'}")
        elif old.get("size") != new["size"]:
            differences.append(f"{label}: {old.get('size')} bytes then, {new['size']} now")
        elif old.get("blake2b") != new["blake2b"]:
            differences.append(f"{label}: same size, other contents")
    raise CLIError(
        f"cannot resume {video.output}: the weights differ from those the checkpoint {video.state} was "
        f"made with ({'; '.join(differences) or 'other files'}); resume with the original weights or "
        "pass --restart instead of --resume to start over",
        EXIT_FAILURE,
    )
