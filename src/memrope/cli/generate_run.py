"""``memrope generate`` running one video: the chunk loop, checkpoints, Ctrl-C, failures and the report."""

from __future__ import annotations

import json
import secrets
import signal
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

from memrope._files import atomic_write_text
from memrope.cli.console import _note
from memrope.cli.generate_plan import Plan, Video
from memrope.cli.latent_log import LatentLog, _save_latents
from memrope.cli.outputs import RUN_FORMAT
from memrope.cli.report import _cache_info, _cuda_devices, _report, _write_report
from memrope.errors import EXIT_FAILURE, CLIError, NonFiniteError
from memrope.video_lengths import FPS, seconds_of_latent_frames, video_frame_count, video_seconds

__all__ = ["_StopRequest", "_generate_video"]

#: Checkpoint fingerprints of the latents log kept in the run file (the current and the one before).
KEPT_LOG_FINGERPRINTS = 2


class _StopRequest:
    """First Ctrl-C / SIGTERM: stop after the current chunk. Second Ctrl-C: KeyboardInterrupt now.

    While :attr:`immediate` is set (before a video's first chunk: nothing to keep yet) the first one
    raises ``KeyboardInterrupt`` at once, so a long start-up (positioning the noise) stops promptly.
    """

    def __init__(self) -> None:
        self.requested = False
        self.immediate = False
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.immediate or (self.requested and signum == signal.SIGINT):
            raise KeyboardInterrupt
        self.requested = True
        name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        _note(f"{name}: stopping after the current chunk (Ctrl-C again to abort now)")

    @contextmanager
    def installed(self) -> Iterator[_StopRequest]:
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        for signal_number in (signal.SIGINT, signal.SIGTERM):
            self._previous[signal_number] = signal.signal(signal_number, self._handle)
        try:
            yield self
        finally:
            for number, handler in self._previous.items():
                signal.signal(number, handler)


def _progress_bar(plan: Plan, video: Video, initial: int, count: int) -> Any:
    from tqdm import tqdm  # type: ignore[import-untyped,unused-ignore]

    label = video.output.name if count == 1 else f"[{video.index + 1}/{count}] {video.output.name}"
    return tqdm(
        total=plan.chunks,
        initial=initial,
        unit="chunk",
        desc=label,
        disable=not plan.progress,
        file=sys.stderr,
        dynamic_ncols=True,
        smoothing=0.1,
    )


def _progress_postfix(plan: Plan, frames_done: int, started: float, generated: int) -> str:
    elapsed = max(time.perf_counter() - started, 1e-9)
    speed = seconds_of_latent_frames(generated * plan.cache.chunk_frames) / elapsed
    return (
        f"latent {frames_done}/{plan.num_frames}, frames {video_frame_count(frames_done)}/"
        f"{video_frame_count(plan.num_frames)}, video {video_seconds(frames_done):.1f}/"
        f"{video_seconds(plan.num_frames):.1f} s, {speed:.3g} video-s/s"
    )


def _check_finite(latents: torch.Tensor, what: str) -> None:
    """Raise :class:`NonFiniteError` when ``latents`` hold NaN or infinity (one host sync per chunk)."""
    if not bool(torch.isfinite(latents).all()):
        raise NonFiniteError(f"{what} holds NaN or infinity")


def _run_info(
    signature: dict[str, Any],
    frame_shape: tuple[int, ...],
    weights: list[dict[str, Any]],
    log: LatentLog,
    start: dict[str, Any] | None,
) -> dict[str, Any]:
    """The run file: settings, weights fingerprint, and the latents log's fingerprint at each checkpoint."""
    return {
        "format": RUN_FORMAT,
        "signature": signature,
        "latent_frame_shape": list(frame_shape),
        "weights": weights,
        "latents": {"frame_bytes": log.frame_bytes, "checkpoints": [start] if start is not None else []},
    }


def _save_checkpoint(
    pipeline: Any, video: Video, log: LatentLog, run_info: dict[str, Any], frames: int
) -> None:
    """Checkpoint at ``frames``: the log on disk, its fingerprint in the run file, then the pipeline state.

    The run file keeps the fingerprints of this and the previous checkpoint, written before the state,
    so whichever state a kill leaves, its fingerprint is there.
    """
    log.sync()
    records: list[dict[str, Any]] = run_info["latents"]["checkpoints"]
    records[:] = [*records[-(KEPT_LOG_FINGERPRINTS - 1) :], {"frames": frames, "blake2b": log.hexdigest()}]
    atomic_write_text(video.run_file, json.dumps(run_info, indent=2))
    pipeline.save_state(video.state)


def _rewind_log(video: Video, log: LatentLog, start_frame: int) -> dict[str, Any] | None:
    """Check the latents log of a resumed video against its checkpoint, then cut it at ``start_frame``.

    Returns the fingerprint record of ``start_frame`` (``None`` for a run file of an older memrope).
    Raises :class:`CLIError` (nothing changed) for a truncated, replaced or modified log.
    """
    again = "pass --restart instead of --resume to start over"
    if log.frames < start_frame:
        raise CLIError(
            f"cannot resume {video.output}: the latents log {log.path} holds {log.frames} latent frames but "
            f"the checkpoint is at latent frame {start_frame} (the log was truncated or replaced); {again}",
            EXIT_FAILURE,
        )
    latents_info = (video.run_info or {}).get("latents")
    digest = log.rewind_digest(start_frame)
    if not isinstance(latents_info, dict):
        _note(f"{video.run_file} records no latents fingerprint (an older memrope); the log is not checked")
        log.truncate(start_frame)
        return None
    records = latents_info.get("checkpoints") or []
    expected = next(
        (r.get("blake2b") for r in records if isinstance(r, dict) and r.get("frames") == start_frame), None
    )
    if expected is None:
        raise CLIError(
            f"cannot resume {video.output}: {video.run_file} has no fingerprint of the latents log for the "
            f"checkpoint at latent frame {start_frame} (the checkpoint or the run file was replaced); {again}",
            EXIT_FAILURE,
        )
    if digest != expected or latents_info.get("frame_bytes") != log.frame_bytes:
        raise CLIError(
            f"cannot resume {video.output}: the latents log {log.path} is not what the checkpoint recorded "
            f"(the blake2b of its first {start_frame} latent frames differs: it was modified or "
            f"overwritten); {again}",
            EXIT_FAILURE,
        )
    log.truncate(start_frame)
    return {"frames": start_frame, "blake2b": digest}


class _VideoRun:
    """One video being generated or resumed: the state its chunk loop, failure handling and report share.

    Constructing it builds the pipeline, reads the checkpoint of a resumed video and opens its latents
    log (each failure a one-line :class:`CLIError`, nothing written); :meth:`run` does the rest.
    """

    def __init__(self, plan: Plan, video: Video, model: Any, weights: list[dict[str, Any]]) -> None:
        from memrope.components import make_pipeline
        from memrope.video import Mp4Writer

        self.plan = plan
        self.video = video
        self.weights = weights
        self.pipeline = make_pipeline(
            plan.preset,
            model,
            cache=plan.cache,
            device=plan.device,
            dtype=plan.dtype,
            kv_dtype=plan.kv_dtype,
            key_workspace=plan.key_workspace,
        )
        self.chunk = plan.cache.chunk_frames
        self.frame_shape = (plan.preset.model_config.in_dim, *plan.preset.latent_hw)
        self.signature = plan.signature(video)
        self.resuming = video.action == "resume"
        self.state: Any = None
        self.start_frame = 0
        if self.resuming:
            self.state, self.start_frame = self._load_state()
        self.temporary_log = plan.save_every is None and not self.resuming
        self.log = self._open_log()
        self.run_info: dict[str, Any] = {}
        self.frames_done = self.start_frame
        self.generated = 0
        self.complete = False
        self.interrupted = False
        self.failure: str | None = None  # why a run that began generating failed
        self.began = False
        self.started = time.perf_counter()
        self.generation_seconds = 0.0
        self.cache_info: dict[str, Any] = {}
        self.recorder: Any = None
        self.bar: Any = None
        self.writer = Mp4Writer(video.output, fps=FPS)

    def _load_state(self) -> tuple[Any, int]:
        """The checkpoint of the resumed video and the latent frame it continues from."""
        video = self.video
        try:
            state = self.pipeline.load_state(video.state)
            return state, int(state["meta"]["start_frame"])
        except Exception as error:  # noqa: BLE001 (a damaged file raises anything: OSError, SafetensorError, ...)
            raise CLIError(
                f"cannot resume {video.output}: the checkpoint {video.state} is unreadable "
                f"({type(error).__name__}: {error}); pass --restart instead of --resume to start over",
                EXIT_FAILURE,
            ) from None

    def _open_log(self) -> LatentLog | None:
        """The latents log, when one is needed (checkpoints, ``--save-latents`` or a resume)."""
        plan, video = self.plan, self.video
        if not (plan.save_every is not None or video.latents_path is not None or self.resuming):
            return None
        log_path = video.latents_log
        if self.temporary_log:
            log_path = video.output.with_name(f".{video.output.name}.{secrets.token_hex(4)}.latents.tmp")
        try:
            return LatentLog(log_path, self.frame_shape, plan.dtype, fresh=not self.resuming)
        except FileNotFoundError:
            raise CLIError(
                f"cannot resume {video.output}: its latents log {log_path} is missing; pass --restart "
                "instead of --resume to start over",
                EXIT_FAILURE,
            ) from None

    def _start(self, decoder: Any) -> Iterable[Any]:
        """Write the run file, re-decode the frames of an interrupted run and open the chunk stream."""
        from memrope.components import make_initial_latents
        from memrope.video import to_uint8

        plan, video, log = self.plan, self.video, self.log
        start_record = (
            _rewind_log(video, log, self.start_frame) if self.resuming and log is not None else None
        )
        if log is not None:
            self.run_info = _run_info(self.signature, self.frame_shape, self.weights, log, start_record)
        if plan.save_every is not None:
            atomic_write_text(video.run_file, json.dumps(self.run_info, indent=2))
        decoder.reset()
        for offset in range(0, self.start_frame, self.chunk):  # re-decode the frames of the interrupted run
            latents = log.read(offset, min(self.chunk, self.start_frame - offset)).unsqueeze(0)  # type: ignore[union-attr]
            self.writer.write(to_uint8(decoder.decode_chunk(latents.to(plan.device))[0]))
        if self.resuming:
            return self.pipeline.stream(resume_from=self.state)
        switches = [(entry.frame, embeds) for entry, embeds in zip(video.switches, video.switch_embeds)]
        return self.pipeline.stream(
            video.embeds,
            num_frames=plan.num_frames,
            seed=plan.seed,
            latent_hw=plan.preset.latent_hw,
            prompt_switches=switches or None,
            initial_latents=make_initial_latents(plan.preset, seed=plan.seed),  # one video: batch 1
        )

    def _attach_recorder(self) -> None:
        """With ``--attention-stats``: record the attention shares of every call from now on."""
        if self.plan.attention_stats and self.pipeline.cache is not None:
            from memrope.diagnostics import AttentionMassRecorder

            self.recorder = AttentionMassRecorder()
            self.recorder.attach(self.pipeline.cache)

    def _generate_chunks(self, stream: Iterable[Any], decoder: Any, stop: _StopRequest) -> None:
        """Take the chunks of ``stream`` until the video is done or a Ctrl-C asks to stop."""
        generation_started = time.perf_counter()
        try:
            for result in stream:
                if self._take_chunk(result, decoder, stop, generation_started):
                    self.interrupted = True
                    break
        finally:
            self.generation_seconds = time.perf_counter() - generation_started

    def _take_chunk(self, result: Any, decoder: Any, stop: _StopRequest, generation_started: float) -> bool:
        """Check, log, decode and checkpoint one chunk; returns whether a Ctrl-C asks to stop after it."""
        from memrope.video import to_uint8

        plan = self.plan
        latents = result.latents
        last = result.start_frame + latents.shape[1] - 1
        _check_finite(latents, f"chunk {result.index} (latent frames {result.start_frame}-{last})")
        if self.log is not None:
            self.log.append(latents[0])
        self.writer.write(to_uint8(decoder.decode_chunk(latents)[0]))
        self.frames_done = result.start_frame + latents.shape[1]
        self.generated += 1
        done = self.frames_done >= plan.num_frames
        due = plan.save_every is not None and (result.index + 1) % plan.save_every == 0
        if not done and plan.save_every is not None and (due or stop.requested):
            _save_checkpoint(self.pipeline, self.video, self.log, self.run_info, self.frames_done)  # type: ignore[arg-type]
        if (self.generated == 1 or done) and self.pipeline.cache is not None:
            self.cache_info = _cache_info(self.pipeline.cache)
        self.bar.set_postfix_str(
            _progress_postfix(plan, self.frames_done, generation_started, self.generated)
        )
        self.bar.update(1)
        return stop.requested and not done

    def _failed(self, error: BaseException) -> CLIError | None:
        """Abort the video after ``error``; returns the one-line error to raise instead (``None``: re-raise)."""
        self.writer.abort()
        if self.began:
            self.failure = str(error) if isinstance(error, CLIError) else f"{type(error).__name__}: {error}"
        if isinstance(error, NonFiniteError):
            return CLIError(
                f"{self.video.output}: {error}; stopped, nothing written over the existing video or report "
                "(check the weights, LoRA, text encoder and cache settings)",
                EXIT_FAILURE,
            )
        if isinstance(error, OSError):
            return CLIError(
                f"{self.video.output}: {error}; the existing video and report are unchanged", EXIT_FAILURE
            )
        return None

    def _finish(self) -> None:
        """Close the bar and the log, drop what a complete video no longer needs, write the report."""
        video = self.video
        if self.bar is not None:
            self.bar.close()
        if self.log is not None:
            self.log.close()
            if self.complete or self.temporary_log:
                self.log.path.unlink(missing_ok=True)
        if self.complete:
            video.state.unlink(missing_ok=True)
            video.run_file.unlink(missing_ok=True)
        if self.writer.committed or (self.failure is not None and not video.output.exists()):
            if self.writer.committed and self.recorder is not None and self.recorder.records:
                self.recorder.save(video.attention_stats)
            report = _report(
                self.plan,
                video,
                self.signature,
                self.frames_done,
                self.start_frame,
                self.generated,
                self.complete,
                self.interrupted,
                time.perf_counter() - self.started,
                self.generation_seconds,
                self.cache_info,
                self.failure,
            )
            _write_report(video, report, quiet=self.failure is not None)

    def run(self, decoder: Any, stop: _StopRequest, count: int) -> bool:
        """Generate the video (``count`` videos in the run, for the progress label); returns whether it is complete."""
        plan, video = self.plan, self.video
        for device in _cuda_devices(plan):
            torch.cuda.reset_peak_memory_stats(device)
        stop.immediate = True  # nothing made yet: a Ctrl-C aborts at once and leaves every output as it was
        try:
            stream = self._start(decoder)
            stop.immediate = False
            self.began = True
            self._attach_recorder()
            self.bar = _progress_bar(plan, video, self.start_frame // self.chunk, count)
            self._generate_chunks(stream, decoder, stop)
            if (
                self.frames_done >= plan.num_frames
                and self.log is not None
                and video.latents_path is not None
            ):
                _save_latents(
                    self.log, self.frames_done, video.latents_path
                )  # before the video: a failure keeps the old one
            self.writer.close()  # the video (complete, or what a first Ctrl-C left) replaces the old one
            self.complete = self.frames_done >= plan.num_frames
        except KeyboardInterrupt:  # a second Ctrl-C, or one before the first chunk
            self.interrupted = True
            if self.generated:
                self.writer.close()  # keep what was made, playable
            else:
                self.writer.abort()
            raise
        except BaseException as error:
            replacement = self._failed(error)
            if replacement is not None:
                raise replacement from None
            raise
        finally:
            stop.immediate = False
            self._finish()
        if not plan.progress or self.interrupted:
            status = (
                "complete"
                if self.complete
                else f"stopped at latent frame {self.frames_done}/{plan.num_frames}"
            )
            _note(f"{video.output}: {status}, {video_frame_count(self.frames_done)} frames")
        return self.complete


def _generate_video(
    plan: Plan,
    video: Video,
    model: Any,
    decoder: Any,
    stop: _StopRequest,
    count: int,
    weights: list[dict[str, Any]],
) -> bool:
    """Generate (or resume) one video; returns whether it is complete.

    On failure (any exception but ``KeyboardInterrupt``) the existing video, its report and the other
    outputs are left as they were and the temporary files removed; a report saying
    ``"complete": false`` and why is written only where no video exists yet (and only once
    generating began: a refused resume writes nothing). NaN/inf in a chunk
    (:class:`NonFiniteError`) and write failures become a one-line :class:`CLIError`.
    """
    return _VideoRun(plan, video, model, weights).run(decoder, stop, count)
