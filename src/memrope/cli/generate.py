"""``memrope generate``: the command (one process, or this rank's share under ``torchrun``).

The parts: :mod:`.generate_args` (the parser), :mod:`.generate_plan` (the arguments checked together),
:mod:`.outputs` (locks, leftovers, checkpoints), :mod:`.loading` (weights, encoder, VAE, DiT) and
:mod:`.generate_run` (one video). The loaders are called through :mod:`.loading` so a test can replace them.
"""

from __future__ import annotations

import argparse

from memrope.cli import loading
from memrope.cli.console import _note, _print_error
from memrope.cli.generate_args import GENERATE_DESCRIPTION, configure_generate
from memrope.cli.generate_plan import _single_device, plan_generate
from memrope.cli.generate_run import _generate_video, _StopRequest
from memrope.cli.outputs import _check_weights, _locked, _prepare_videos, _weights_fingerprint
from memrope.cli.registry import Command, register_command
from memrope.distributed import DistributedContext, DistributedEnv
from memrope.errors import EXIT_INTERRUPTED, EXIT_OK, CLIError
from memrope.presets import presets_table

__all__ = ["GENERATE_COMMAND"]


def _run_generate(args: argparse.Namespace) -> int:
    if args.list_presets:
        print(presets_table())
        return EXIT_OK
    try:
        env = DistributedEnv.from_environ()
    except ValueError as error:
        raise CLIError(f"bad torchrun environment: {error}") from None
    if not env.is_distributed:
        return _generate_share(args, env)
    with DistributedContext(env, device=_single_device(args, env)) as context:
        try:
            code = _generate_share(args, env)
        except CLIError as error:  # every rank reaches the gather, so no rank waits forever
            _print_error(f"[rank {env.rank}] {error}")
            code = error.exit_code
        codes = context.gather_object(code)
    if codes is not None:
        failed = [rank for rank, rank_code in enumerate(codes) if rank_code != EXIT_OK]
        status = f"ranks {failed} did not finish" if failed else "every rank finished"
        _note(f"{env.world_size} ranks, {status}")
    return code


def _generate_share(args: argparse.Namespace, env: DistributedEnv) -> int:
    """Generate this rank's videos (every video in a single process), holding their locks."""
    plan = plan_generate(args, env)
    if env.is_distributed:
        indices = [video.index for video in plan.videos]
        _note(f"[rank {env.rank}/{env.world_size}] {len(indices)} video(s): {indices} on {plan.device}")
    with _locked(plan.videos):
        _prepare_videos(plan)
        todo = [video for video in plan.videos if video.action != "skip"]
        for video in plan.videos:
            if video.action == "skip":
                _note(f"{video.output} is already complete; skipped")
        if not todo:
            return EXIT_OK
        loading._resolve_weights(plan)
        resumed = [video for video in todo if video.action == "resume"]
        weights = _weights_fingerprint(plan) if plan.save_every is not None or resumed else []
        for video in resumed:
            _check_weights(video, weights)
        loading._encode_prompts(plan, [video for video in todo if video.action == "fresh"])
        decoder = loading._load_decoder(plan)
        model = loading._load_model(plan)
        stop = _StopRequest()
        with stop.installed():
            for video in todo:
                complete = _generate_video(plan, video, model, decoder, stop, plan.total_videos, weights)
                if not complete:
                    if plan.save_every is not None:
                        _note(f"resume with the same command plus --resume (checkpoint: {video.state})")
                    return EXIT_INTERRUPTED
    return EXIT_OK


GENERATE_COMMAND = register_command(
    Command(
        "generate",
        "generate videos (mp4 + JSON report)",
        configure_generate,
        _run_generate,
        GENERATE_DESCRIPTION,
    )
)
