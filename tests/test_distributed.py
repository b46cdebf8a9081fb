"""Data-parallel generation (memrope.distributed): environment parsing, sharding, and a real
2-process ``torchrun`` job on the CPU (gloo) generating prompts with the tiny model.

Run as a script (``python -m torch.distributed.run ... tests/test_distributed.py OUT_DIR``) this file
is the worker of that job.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from memrope.config import MemRoPEConfig
from memrope.distributed import DistributedContext, DistributedEnv, shard_indices
from memrope.pipeline import CausalInferencePipeline
from memrope.presets import tiny_model, tiny_text_encoder

PROMPTS = (
    "a red fox running through snow",
    "a lighthouse at dusk",
    "waves crashing on black rocks",
    "a paper boat drifting down a gutter",
    "a city street in the rain at night",
)
WORLD_SIZE = 2
SEED = 1000
LATENT_HW = (16, 24)
NUM_FRAMES = 6  # two chunks
CACHE = MemRoPEConfig()
TORCHRUN_ENV = {
    "RANK": "3",
    "WORLD_SIZE": "8",
    "LOCAL_RANK": "1",
    "LOCAL_WORLD_SIZE": "2",
    "MASTER_ADDR": "10.0.0.1",
    "MASTER_PORT": "29500",
}


def generate(prompt: str, index: int) -> torch.Tensor:
    """The latent video of prompt number ``index`` (seed ``SEED + index``), as every rank makes it."""
    pipeline = CausalInferencePipeline(tiny_model(), CACHE)
    embeds = tiny_text_encoder().encode([prompt])
    return pipeline.generate(embeds, num_frames=NUM_FRAMES, seed=SEED + index, latent_hw=LATENT_HW)


def run_worker(out_dir: Path) -> None:
    """One rank of the job: generate this rank's prompts, one file per global index; rank 0 gathers."""
    with DistributedContext(device="cpu") as context:
        done = []
        for index, prompt in context.shard(PROMPTS):
            latents = generate(prompt, index)
            save_file(
                {"latents": latents.contiguous()},
                out_dir / f"{index}.safetensors",
                {"rank": str(context.rank)},
            )
            done.append(index)
        gathered = context.gather_object(done)
        if context.is_main:
            summary = {"world_size": context.world_size, "backend": context.backend, "indices": gathered}
            (out_dir / "gathered.json").write_text(json.dumps(summary))


# ---------------------------------------------------------------------- sharding
@given(count=st.integers(0, 300), world_size=st.integers(1, 40))
def test_shards_cover_every_index_exactly_once(count: int, world_size: int) -> None:
    items = [f"prompt {index}" for index in range(count)]
    shards = [
        DistributedContext(DistributedEnv(rank=rank, world_size=world_size), device="cpu").shard(items)
        for rank in range(world_size)
    ]
    taken = sorted(index for shard in shards for index, _ in shard)
    assert taken == list(range(count))
    assert all(items[index] == item for shard in shards for index, item in shard)
    sizes = [len(shard) for shard in shards]
    assert max(sizes) - min(sizes) <= 1
    assert [list(shard_indices(count, rank, world_size)) for rank in range(world_size)] == [
        [index for index, _ in shard] for shard in shards
    ]


def test_fewer_items_than_ranks_leaves_the_last_ranks_idle() -> None:
    shards = [list(shard_indices(3, rank, 5)) for rank in range(5)]
    assert shards == [[0], [1], [2], [], []]


def test_shard_takes_any_iterable() -> None:
    context = DistributedContext(DistributedEnv(rank=1, world_size=3), device="cpu")
    assert context.shard(iter("abcdefg")) == [(1, "b"), (4, "e")]


@pytest.mark.parametrize(
    "count, rank, world_size, message",
    [
        (-1, 0, 1, r"count must be an int >= 0"),
        (3, 2, 2, r"rank=2 must be smaller than world_size=2"),
        (3, 0, 0, r"world_size must be an int >= 1"),
    ],
)
def test_shard_indices_rejects_bad_arguments(count: int, rank: int, world_size: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        shard_indices(count, rank, world_size)


# ---------------------------------------------------------------------- environment
def test_environment_defaults_to_a_single_process() -> None:
    env = DistributedEnv.from_environ({})
    assert env == DistributedEnv(rank=0, world_size=1, local_rank=0, local_world_size=1)
    assert not env.is_distributed


def test_environment_reads_torchrun_variables() -> None:
    env = DistributedEnv.from_environ(TORCHRUN_ENV)
    assert (env.rank, env.world_size, env.local_rank, env.local_world_size) == (3, 8, 1, 2)
    assert (env.master_addr, env.master_port, env.is_distributed) == ("10.0.0.1", 29500, True)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"RANK": "8"}, r"RANK=8 must be smaller than WORLD_SIZE=8"),
        ({"LOCAL_RANK": "2"}, r"LOCAL_RANK=2 must be smaller than LOCAL_WORLD_SIZE=2"),
        ({"WORLD_SIZE": "0", "RANK": "0"}, r"WORLD_SIZE must be an integer >= 1, got 0"),
        ({"RANK": "three"}, r"RANK must be an integer >= 0, got 'three'"),
        ({"RANK": "-1"}, r"RANK must be an integer >= 0, got -1"),
        ({"LOCAL_WORLD_SIZE": "9"}, r"LOCAL_WORLD_SIZE=9 cannot exceed WORLD_SIZE=8"),
        ({"WORLD_SIZE": None}, r"RANK is set but WORLD_SIZE is not"),
        ({"MASTER_PORT": None, "LOCAL_RANK": None}, r"WORLD_SIZE=8 needs LOCAL_RANK, MASTER_PORT"),
    ],
)
def test_environment_errors_name_the_variable(changes: dict[str, str | None], message: str) -> None:
    environ = {**TORCHRUN_ENV, **changes}
    with pytest.raises(ValueError, match=message):
        DistributedEnv.from_environ({name: value for name, value in environ.items() if value is not None})


# ---------------------------------------------------------------------- context
def test_single_process_context_needs_no_process_group() -> None:
    with DistributedContext(DistributedEnv(), device="cpu") as context:
        assert (context.rank, context.world_size, context.is_main, context.backend) == (0, 1, True, "gloo")
        context.barrier()
        assert context.gather_object({"done": [0, 1]}) == [{"done": [0, 1]}]
    assert not torch.distributed.is_initialized()


def test_default_device_is_the_local_gpu_with_nccl(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    env = DistributedEnv.from_environ(TORCHRUN_ENV)
    context = DistributedContext(env)
    assert (context.device, context.backend) == (torch.device("cuda", 1), "nccl")
    assert DistributedContext(env, backend="gloo").backend == "gloo"
    crowded = DistributedEnv(rank=2, world_size=4, local_rank=2, local_world_size=4)
    with pytest.raises(ValueError, match=r"LOCAL_RANK=2 has no GPU: 2 CUDA device\(s\) visible"):
        DistributedContext(crowded)


def test_default_device_without_cuda_is_the_cpu_with_gloo(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    context = DistributedContext(DistributedEnv.from_environ(TORCHRUN_ENV))
    assert (context.device, context.backend) == (torch.device("cpu"), "gloo")


def test_backend_is_validated() -> None:
    with pytest.raises(ValueError, match=r"backend must be one of \('gloo', 'nccl', 'mpi', 'ucc'\)"):
        DistributedContext(DistributedEnv(), backend="tcp", device="cpu")
    with pytest.raises(ValueError, match=r"backend='nccl' needs a CUDA device"):
        DistributedContext(DistributedEnv(), backend="nccl", device="cpu")


def test_collectives_outside_the_context_explain_how_to_enter_it() -> None:
    context = DistributedContext(DistributedEnv(rank=0, world_size=2), device="cpu")
    with pytest.raises(RuntimeError, match=r"gather_object\(\) with WORLD_SIZE=2 needs the process group"):
        context.gather_object(1)
    with pytest.raises(RuntimeError, match=r"barrier\(\) with WORLD_SIZE=2"):
        context.barrier()


# ---------------------------------------------------------------------- a real 2-process job
@contextmanager
def _single_thread() -> Iterator[None]:
    """Compute like the workers (torchrun runs them with one intra-op thread)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def test_torchrun_job_generates_every_prompt_once_as_a_single_process_would(tmp_path: Path) -> None:
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={WORLD_SIZE}",
        __file__,
        str(tmp_path),
    ]
    environ = {**os.environ, "OMP_NUM_THREADS": "1"}
    job = subprocess.run(command, env=environ, capture_output=True, text=True, timeout=120, check=False)
    assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
    summary = json.loads((tmp_path / "gathered.json").read_text())
    assert summary["world_size"] == WORLD_SIZE and summary["backend"] == "gloo"
    indices = [index for rank_indices in summary["indices"] for index in rank_indices]
    assert sorted(indices) == list(range(len(PROMPTS))) and len(set(indices)) == len(indices)
    assert summary["indices"] == [[0, 2, 4], [1, 3]]
    with _single_thread():
        for index, prompt in enumerate(PROMPTS):
            written = load_file(tmp_path / f"{index}.safetensors")["latents"]
            assert torch.equal(written, generate(prompt, index)), f"prompt {index}"


if __name__ == "__main__":
    run_worker(Path(sys.argv[1]))
