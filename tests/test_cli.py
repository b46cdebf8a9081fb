"""`memrope` command line: tiny generation end to end, clear errors that never touch an existing
output, the presets table, and resume after an interrupted (killed) run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from cli_helpers import SENTINEL, needs_video, tiny_args
from safetensors.torch import load_file

from memrope.cli import main

pytestmark = needs_video


def read_frames(path: Path) -> torch.Tensor:
    import imageio.v2 as imageio

    with imageio.get_reader(path) as reader:
        return torch.stack([torch.from_numpy(frame) for frame in reader])


def test_tiny_generation_writes_mp4_and_report(tmp_path: Path) -> None:
    output = tmp_path / "fox.mp4"
    assert (
        main(tiny_args(output, "--num-frames", "6", "--save-latents", str(tmp_path / "fox.safetensors"))) == 0
    )
    frames = read_frames(output)
    assert frames.shape == (4 * 6 - 3, 128, 192, 3)
    assert frames.float().std() > 10  # colourful, not blank
    report = json.loads((tmp_path / "fox.mp4.json").read_text())
    assert report["complete"] and not report["interrupted"]
    assert (report["latent_frames"], report["video_frames"], report["chunks"]) == (6, 21, 2)
    assert report["seconds_of_video"] == pytest.approx(21 / 16)
    assert report["wall_seconds"] > 0 and report["chunks_per_second"] > 0
    assert report["cache"]["slot_layout"] == [f"f{i}" for i in range(6)]
    assert "MemRoPECache" in report["cache"]["summary"] and report["cache"]["resident_bytes"] > 0
    assert report["peak_rss_bytes"] > 0
    latents = load_file(tmp_path / "fox.safetensors")["latents"]
    assert latents.shape == (1, 6, 16, 16, 24) and torch.isfinite(latents).all()
    assert not list(tmp_path.glob(".*"))  # no temporary files left


def test_default_length_seconds_and_policy_options(tmp_path: Path) -> None:
    output = tmp_path / "sink.mp4"
    args = tiny_args(
        output,
        "--seconds",
        "3",
        "--policy",
        "sink",
        "--cache-frames",
        "6",
        "--sink-frames",
        "1",
        "--seed",
        "5",
        "--dtype",
        "bf16",
        "--device",
        "cpu",
    )
    assert main(args) == 0
    report = json.loads((tmp_path / "sink.mp4.json").read_text())
    # the shortest whole-chunk video of at least 3 s: 15 latent frames = 57 frames = 3.56 s
    assert report["latent_frames"] == 15 and report["dtype"] == "bfloat16" and report["seed"] == 5
    assert report["requested"] == {"seconds": 3.0}
    assert report["produced"] == {"latent_frames": 15, "video_frames": 57, "seconds": 57 / 16}
    assert report["cache"]["config"]["policy"] == "sink"
    assert report["cache"]["config"]["protect_sink_on_rewrite"] is True
    assert report["cache"]["slot_layout"] == ["f0", "f10", "f11", "f12", "f13", "f14"]
    assert read_frames(output).shape[0] == 57


def test_no_protect_sink_reaches_the_cache_config(tmp_path: Path) -> None:
    from memrope.cli import build_parser
    from memrope.cli.generate_plan import _cache_config
    from memrope.presets import get_preset

    parser = build_parser()
    preset = get_preset("causal-forcing-framewise-30s")
    protected = _cache_config(parser.parse_args(["generate", "--prompt", "x"]), preset)
    written = _cache_config(parser.parse_args(["generate", "--prompt", "x", "--no-protect-sink"]), preset)
    assert protected.protect_sink_on_rewrite and not written.protect_sink_on_rewrite
    assert written.chunk_frames == 1


def test_prompts_file_gives_one_video_per_prompt(tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat\n\n   \na dog on a beach\n", encoding="utf-8")
    output = tmp_path / "out" / "video.mp4"
    output.parent.mkdir()
    args = [
        "generate",
        "--prompts-file",
        str(prompts),
        "--output",
        str(output),
        "--num-frames",
        "3",
        "--no-progress",
    ]
    assert main(args) == 0
    first, second = output.with_name("video_0.mp4"), output.with_name("video_1.mp4")
    assert sorted(p.name for p in output.parent.glob("*.mp4")) == ["video_0.mp4", "video_1.mp4"]
    assert json.loads(first.with_name("video_0.mp4.json").read_text())["prompt"] == "a cat"
    assert json.loads(second.with_name("video_1.mp4.json").read_text())["prompt"] == "a dog on a beach"
    assert not torch.equal(read_frames(first), read_frames(second))


BAD_INPUTS = [
    (["--model", "self-forcing-2h"], "nearest: 'self-forcing-1h'"),
    (["--checkpoint", "/nonexistent/self_forcing_dmd.pt"], "checkpoint not available"),
    (["--alpha-long", "2"], "--alpha-long"),
    (["--alpha-short", "x"], "expected a number"),
    (["--cache-frames", "5"], "--cache-frames must be >="),
    (["--seed", "-1"], "--seed"),
    (["--save-every", "0"], "positive integer"),
    (["--seconds", "0"], "--seconds 0: the length must be > 0 seconds"),
    (["--seconds", "-2"], "--seconds -2: the length must be > 0 seconds"),
    (["--seconds", "nan"], "expected a finite number"),
    (["--seconds", "1e9"], "--seconds 1000000000 is too long: memrope generate makes at most 24 h"),
    (["--num-frames", "400000"], "--num-frames 400000 is too long: memrope generate makes at most 24 h"),
    (["--seed", str(2**64)], "expected an integer in [0, 2**64 - 1]"),
    (["--device", "meta"], "--device meta holds no data"),
    (["--resume", "--restart"], "not allowed with"),
    (["--num-frames", "6", "--seconds", "3"], "not allowed with"),
    (["--policy", "lru"], "invalid choice"),
    (["--policy", "full", "--num-frames", "1200"], "at most 1024"),
    (["--dtype", "float8"], "unknown dtype"),
    (["--device", "banana"], "unknown --device"),
    (["--lora", "lora.pt"], "--lora needs --checkpoint"),
]


@pytest.mark.parametrize(("extra", "message"), BAD_INPUTS, ids=[" ".join(e) for e, _ in BAD_INPUTS])
def test_bad_inputs_fail_clearly_and_leave_the_output_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    output = tmp_path / "video.mp4"
    output.write_bytes(SENTINEL)
    code = main(tiny_args(output, *extra))
    captured = capsys.readouterr()
    assert code != 0
    assert message in captured.err
    assert "Traceback" not in captured.err
    assert output.read_bytes() == SENTINEL
    assert sorted(p.name for p in tmp_path.iterdir()) == ["video.mp4"]


def _bad_prompt_cases(tmp_path: Path) -> list[tuple[list[str], str]]:
    blank = tmp_path / "blank.txt"
    blank.write_text("\n  \n\n", encoding="utf-8")
    return [
        ([], "no prompt"),
        (["--prompt", "   "], "--prompt must not be empty"),
        (["--prompts-file", str(blank)], "holds no prompt"),
        (["--prompts-file", str(tmp_path / "missing.txt")], "does not exist"),
    ]


def test_empty_prompt_lists_fail(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "video.mp4"
    output.write_bytes(SENTINEL)
    for extra, message in _bad_prompt_cases(tmp_path):
        code = main(["generate", "--output", str(output), "--no-progress", *extra])
        err = capsys.readouterr().err
        assert code == 2 and message in err and "Traceback" not in err, (extra, err)
    assert output.read_bytes() == SENTINEL


def test_unwritable_outputs_fail_before_generating(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cases = [
        (tmp_path / "missing" / "video.mp4", "does not exist"),
        (tmp_path, "is a directory"),
    ]
    if os.geteuid() != 0:  # root may write anywhere
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        cases.append((locked / "video.mp4", "not writable"))
    for output, message in cases:
        assert main(tiny_args(output)) == 2
        assert message in capsys.readouterr().err
    latents = tmp_path / "nowhere" / "latents.safetensors"
    assert main(tiny_args(tmp_path / "ok.mp4", "--save-latents", str(latents))) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "ok.mp4").exists()


def test_unavailable_cuda_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    assert main(tiny_args(tmp_path / "v.mp4", "--device", "cuda")) == 2
    assert "CUDA is not available" in capsys.readouterr().err


def test_missing_hub_checkpoint_offline_gives_guidance(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    output = tmp_path / "sf.mp4"
    output.write_bytes(SENTINEL)
    code = main(
        [
            "generate",
            "--model",
            "self-forcing-30s",
            "--prompt",
            "a cat",
            "--output",
            str(output),
            "--device",
            "cpu",
            "--no-progress",
        ]
    )
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert "checkpoint not available" in err and "huggingface-cli download gdhe17/Self-Forcing" in err
    assert output.read_bytes() == SENTINEL


def test_presets_command_and_list_presets(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["presets"]) == 0
    table = capsys.readouterr().out
    assert "self-forcing-<length>" in table and "longlive-<length>" in table and "GiB" in table
    assert main(["presets", "--all"]) == 0
    every = capsys.readouterr().out
    assert "self-forcing-60s" in every and "longlive-1h" in every and "14400" in every
    assert main(["generate", "--list-presets"]) == 0
    assert capsys.readouterr().out == table
    assert main(["presets", "--json"]) == 0
    presets = json.loads(capsys.readouterr().out)
    longlive = next(p for p in presets if p["name"] == "longlive-1h")
    assert longlive["latent_frames"] == 14400 and longlive["checkpoint"] == "longlive"
    assert main([]) == 2


# --------------------------------------------------------------------------------------------------
# Interruption and resume (a real process, killed)
# --------------------------------------------------------------------------------------------------

RESUME_FRAMES = "150"  # 50 chunks: a couple of seconds, long enough to interrupt


def _start(output: Path, latents: Path) -> subprocess.Popen[bytes]:
    command = [
        sys.executable,
        "-m",
        "memrope.cli",
        *tiny_args(
            output, "--num-frames", RESUME_FRAMES, "--save-every", "1", "--save-latents", str(latents)
        ),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)


def _wait_for(path: Path, process: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None:
            pytest.fail(f"process ended before {path} appeared: {process.communicate()[1].decode()}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"{path} did not appear")
        time.sleep(0.02)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.Tensor, torch.Tensor]:
    folder = tmp_path_factory.mktemp("reference")
    output, latents = folder / "ref.mp4", folder / "ref.safetensors"
    assert main(tiny_args(output, "--num-frames", RESUME_FRAMES, "--save-latents", str(latents))) == 0
    return load_file(latents)["latents"], read_frames(output)


@pytest.mark.parametrize("how", ["SIGKILL", "SIGINT"])
def test_resume_after_interruption_equals_an_uninterrupted_run(
    tmp_path: Path, reference: tuple[torch.Tensor, torch.Tensor], how: str, capsys: pytest.CaptureFixture[str]
) -> None:
    output, latents = tmp_path / "video.mp4", tmp_path / "video.safetensors"
    output.write_bytes(SENTINEL)
    state = tmp_path / "video.mp4.resume.safetensors"
    process = _start(output, latents)
    _wait_for(state, process)
    process.send_signal(getattr(signal, how))
    _, err = process.communicate(timeout=60)
    if how == "SIGKILL":
        assert process.returncode == -signal.SIGKILL
        assert output.read_bytes() == SENTINEL  # a killed writer never replaces the output
    else:
        assert process.returncode == 130, err.decode()
        assert b"Traceback" not in err and b"--resume" in err
        partial = read_frames(output)  # playable, shorter
        report = json.loads((tmp_path / "video.mp4.json").read_text())
        assert not report["complete"] and report["interrupted"]
        assert partial.shape[0] == report["video_frames"] < reference[1].shape[0]
    assert state.exists() and not latents.exists()

    # a resume with other settings is refused and changes nothing
    assert (
        main(tiny_args(output, "--num-frames", RESUME_FRAMES, "--save-every", "1", "--resume", "--seed", "1"))
        == 2
    )
    assert "other settings" in capsys.readouterr().err and state.exists()

    args = tiny_args(
        output, "--num-frames", RESUME_FRAMES, "--save-every", "1", "--save-latents", str(latents), "--resume"
    )
    assert main(args) == 0
    assert torch.equal(load_file(latents)["latents"], reference[0])
    assert torch.equal(read_frames(output), reference[1])
    report = json.loads((tmp_path / "video.mp4.json").read_text())
    assert report["complete"] and report["resumed_from_latent_frame"] > 0
    assert not state.exists() and not (tmp_path / "video.mp4.resume.latents").exists()
    assert not list(
        tmp_path.glob(".*")
    )  # what the SIGKILLed writer left behind is cleaned, the lock released

    # resuming a finished video skips it
    before = output.stat().st_mtime_ns
    assert main(args) == 0
    assert "already complete" in capsys.readouterr().err
    assert output.stat().st_mtime_ns == before


def test_checkpoint_override_loads_weights_through_the_loader(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from memrope.presets import tiny_model

    weights = tmp_path / "tiny_seed1.safetensors"
    save_file(tiny_model(seed=1).state_dict(), weights)
    default, loaded = tmp_path / "default.safetensors", tmp_path / "loaded.safetensors"
    assert main(tiny_args(tmp_path / "a.mp4", "--num-frames", "3", "--save-latents", str(default))) == 0
    assert (
        main(
            tiny_args(
                tmp_path / "b.mp4",
                "--num-frames",
                "3",
                "--save-latents",
                str(loaded),
                "--checkpoint",
                str(weights),
            )
        )
        == 0
    )
    assert not torch.equal(load_file(default)["latents"], load_file(loaded)["latents"])
    bad = tmp_path / "bad.safetensors"
    save_file({"blocks.0.ffn.0.weight": torch.zeros(2, 2)}, bad)
    output = tmp_path / "c.mp4"
    assert main(tiny_args(output, "--checkpoint", str(bad))) == 1
    assert not output.exists()


# --------------------------------------------------------------------------------------------------
# Prompt schedules
# --------------------------------------------------------------------------------------------------


def _schedule_args(output: Path, schedule: str, *extra: str) -> list[str]:
    return [
        "generate",
        "--model",
        "tiny",
        "--prompt-schedule",
        schedule,
        "--output",
        str(output),
        "--num-frames",
        "18",
        "--no-progress",
        *extra,
    ]


def test_prompt_schedule_switches_after_the_switch_frame_only(tmp_path: Path) -> None:
    plain, switched = tmp_path / "plain.safetensors", tmp_path / "switched.safetensors"
    assert main(tiny_args(tmp_path / "a.mp4", "--num-frames", "18", "--save-latents", str(plain))) == 0
    schedule = "0: a red fox ;9:a red fox jumps into the snow;3.75s:it runs away"
    assert main(_schedule_args(tmp_path / "b.mp4", schedule, "--save-latents", str(switched))) == 0
    before, after = load_file(plain)["latents"], load_file(switched)["latents"]
    assert torch.equal(before[:, :9], after[:, :9])
    assert (before[:, 9:] - after[:, 9:]).abs().amax(dim=(0, 2, 3, 4)).min() > 1e-3
    report = json.loads((tmp_path / "b.mp4.json").read_text())
    assert report["prompt"] == "a red fox"
    assert report["prompt_schedule"] == [
        {"frame": 0, "prompt": "a red fox"},
        {"frame": 9, "prompt": "a red fox jumps into the snow"},
        {"frame": 15, "prompt": "it runs away"},
    ]
    assert len(read_frames(tmp_path / "b.mp4")) == 4 * 18 - 3


def test_prompt_schedule_from_a_file_and_resume(tmp_path: Path) -> None:
    schedule = tmp_path / "story.txt"
    schedule.write_text(
        "0: a harbour at dawn; boats\n\n6: a storm rolls in\n12: calm again\n", encoding="utf-8"
    )
    reference = tmp_path / "ref.safetensors"
    assert main(_schedule_args(tmp_path / "ref.mp4", f"@{schedule}", "--save-latents", str(reference))) == 0
    report = json.loads((tmp_path / "ref.mp4.json").read_text())
    assert [entry["frame"] for entry in report["prompt_schedule"]] == [0, 6, 12]
    assert report["prompt"] == "a harbour at dawn; boats"

    output, latents = tmp_path / "v.mp4", tmp_path / "v.safetensors"
    state = tmp_path / "v.mp4.resume.safetensors"
    command = [
        sys.executable,
        "-m",
        "memrope.cli",
        *_schedule_args(output, f"@{schedule}", "--num-frames", "150", "--save-every", "2"),
    ]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    _wait_for(state, process)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)
    full = tmp_path / "full.safetensors"
    assert (
        main(
            _schedule_args(
                tmp_path / "full.mp4", f"@{schedule}", "--num-frames", "150", "--save-latents", str(full)
            )
        )
        == 0
    )
    # another schedule is other settings: refused
    assert (
        main(
            _schedule_args(
                output, "0:a harbour at dawn; boats", "--num-frames", "150", "--save-every", "2", "--resume"
            )
        )
        == 2
    )
    assert (
        main(
            _schedule_args(
                output,
                f"@{schedule}",
                "--num-frames",
                "150",
                "--save-every",
                "2",
                "--resume",
                "--save-latents",
                str(latents),
            )
        )
        == 0
    )
    assert json.loads((tmp_path / "v.mp4.json").read_text())["resumed_from_latent_frame"] > 0
    assert torch.equal(load_file(latents)["latents"], load_file(full)["latents"])


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            ["--prompt-schedule", "0:a;2:b;3:c"],
            "entry 2 ('3') does not start after the previous entry (latent frame 3)",
        ),
        (["--prompt-schedule", "3:a"], "must start at frame 0"),
        (
            ["--prompt-schedule", "0:a;30:b"],
            "entry 1 ('30') starts at or after the video's end (latent frame 24)",
        ),
        (
            ["--prompt-schedule", "0:a;5.9s:b"],
            "entry 1 ('5.9s' -> latent frame 24) starts at or after the video's end",
        ),
        (["--prompt-schedule", "@/nonexistent/story.txt"], "cannot read --prompt-schedule file"),
        (["--prompt-schedule", "0:a;6:b", "--prompts-file", "p.txt"], "do not combine it with --prompt"),
    ],
)
def test_bad_prompt_schedules_fail_clearly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    output = tmp_path / "video.mp4"
    args = ["generate", "--model", "tiny", "--output", str(output), "--no-progress", *extra]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not output.exists()


def test_attention_stats_are_recorded_and_plotted(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from memrope.diagnostics import load_attention_mass

    output = tmp_path / "fox.mp4"
    assert main(tiny_args(output, "--num-frames", "15", "--attention-stats")) == 0
    stats = tmp_path / "fox.mp4.attention.json"
    data = load_attention_mass(stats)
    records = data["records"]
    assert len(records) == 5 * 5 * 2  # chunks x (4 denoising steps + the clean refresh) x layers
    assert {record["chunk"] for record in records} == set(range(5))
    last = [record for record in records if record["chunk"] == 4]
    assert all(record["shares"]["long"] > 0 and record["shares"]["short"] > 0 for record in last)
    assert json.loads((tmp_path / "fox.mp4.json").read_text())["attention_stats"] == str(stats)
    assert main(["plot-attention", str(stats), "-o", str(tmp_path / "fox.png")]) == 0
    assert (tmp_path / "fox.png").stat().st_size > 1000


# --------------------------------------------------------------------------------------------------
# Devices and torchrun
# --------------------------------------------------------------------------------------------------


def test_split_placement_over_two_cpu_devices_gives_the_same_video(tmp_path: Path) -> None:
    single, split = tmp_path / "single.safetensors", tmp_path / "split.safetensors"
    assert main(tiny_args(tmp_path / "a.mp4", "--num-frames", "15", "--save-latents", str(single))) == 0
    assert (
        main(
            tiny_args(
                tmp_path / "b.mp4",
                "--num-frames",
                "15",
                "--save-latents",
                str(split),
                "--placement",
                "split",
                "--devices",
                "cpu,cpu",
                "--split-at",
                "1",
                "--offload",
            )
        )
        == 0
    )
    assert torch.equal(load_file(single)["latents"], load_file(split)["latents"])
    placement = json.loads((tmp_path / "b.mp4.json").read_text())["placement"]
    assert placement["mode"] == "split"
    assert json.loads((tmp_path / "a.mp4.json").read_text())["placement"]["mode"] == "single"
    # auto on a machine without a GPU: everything on the CPU
    assert main(tiny_args(tmp_path / "c.mp4", "--num-frames", "3", "--placement", "auto")) == 0
    auto = json.loads((tmp_path / "c.mp4.json").read_text())["placement"]
    assert auto["mode"] == "single" and auto["devices"] == ["cpu"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--devices", "cpu,cpu"], "--devices and --split-at need --placement split or auto"),
        (["--split-at", "1"], "--devices and --split-at need --placement split or auto"),
        (["--placement", "split", "--device", "cpu"], "--placement split takes --devices, not --device"),
        (["--placement", "split", "--devices", "cpu"], "--placement split:"),
        (["--placement", "split", "--devices", "cpu,cpu", "--split-at", "5"], "--split-at"),
        (["--placement", "auto", "--split-at", "1"], "--split-at needs --placement split"),
        (["--placement", "split", "--devices", "cpu,banana"], "unknown --device 'banana'"),
        (["--placement", "diagonal"], "invalid choice"),
    ],
)
def test_bad_placements_fail_clearly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    output = tmp_path / "video.mp4"
    assert main(tiny_args(output, *extra)) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not output.exists()


def test_torchrun_ranks_share_the_prompts_file(tmp_path: Path) -> None:
    prompts = ["a cat", "a dog on a beach", "a lighthouse at dusk", "a red fox", "rain on a window"]
    prompts_file = tmp_path / "prompts.txt"
    prompts_file.write_text("\n".join(prompts) + "\n", encoding="utf-8")
    output = tmp_path / "out" / "v.mp4"
    output.parent.mkdir()
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "memrope.cli",
        "generate",
        "--prompts-file",
        str(prompts_file),
        "--num-frames",
        "6",
        "--output",
        str(output),
        "--no-progress",
        "--save-latents",
        str(tmp_path / "out" / "z.safetensors"),
    ]
    result = subprocess.run(
        command,
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr
    assert "2 ranks, every rank finished" in result.stderr
    reports = {
        int(path.name.split("_")[1].split(".")[0]): json.loads(path.read_text())
        for path in output.parent.glob("v_*.mp4.json")
    }
    assert sorted(reports) == list(range(5))  # every prompt once: no gap, no duplicate
    assert {index: report["rank"] for index, report in reports.items()} == {0: 0, 1: 1, 2: 0, 3: 1, 4: 0}
    assert all(
        report["world_size"] == 2 and report["prompt"] == prompts[index] for index, report in reports.items()
    )
    # rank 1's video of "a red fox" equals the single-process generation of that prompt
    alone = tmp_path / "alone.safetensors"
    assert main(tiny_args(tmp_path / "alone.mp4", "--num-frames", "6", "--save-latents", str(alone))) == 0
    assert torch.equal(
        load_file(tmp_path / "out" / "z_3.safetensors")["latents"], load_file(alone)["latents"]
    )


def test_version_prints_the_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    """``memrope --version`` prints ``memrope <memrope.__version__>`` on stdout and exits 0."""
    import memrope

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"memrope {memrope.__version__}"
