"""Data-parallel training on the CPU with gloo and 2 processes: gradients are the mean over the ranks'
batches, every rank keeps the same parameters, resume is exact, and ``torchrun -m flowvi fit`` writes
one run directory."""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
import torch.multiprocessing as mp

SRC = str(Path(__file__).resolve().parents[2] / "src")


def _worker(rank, world, tmp, fn):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world))
    # a file rendezvous: no port that another process could take between choosing and binding it
    init = Path(tmp) / "rendezvous"
    torch.distributed.init_process_group("gloo", init_method=init.as_uri(), rank=rank, world_size=world)
    from flowvi.training import distributed as dist

    try:
        fn(rank, world, Path(tmp))
    except BaseException:
        dist.shutdown()
        raise
    dist.leave()


def _spawn(fn, tmp_path, world=2):
    mp.spawn(_worker, args=(world, str(tmp_path), fn), nprocs=world, join=True)


def _flow_and_target():
    from flowvi import realnvp
    from flowvi.targets import make_target

    torch.manual_seed(0)
    target = make_target("conjugate_regression", p=3, n=20)
    return realnvp(target.dim, layers=2, hidden=16), target


def _check_gradient_mean(rank, world, tmp):
    from flowvi.objectives.estimators import reparam
    from flowvi.training import distributed as dist

    flow, target = _flow_and_target()
    params = list(flow.parameters())

    def grads_for(seed):
        flow.zero_grad(set_to_none=True)
        torch.manual_seed(seed)
        reparam(flow, target, 64).loss.backward()
        return [p.grad.clone() for p in params]

    expected = [sum(gs) / world for gs in zip(*[grads_for(100 + r) for r in range(world)], strict=True)]
    # Small buckets: several all-reduces overlap the backward pass.
    averager = dist.GradientAverager(params, bucket_mb=0.0002)
    assert len(averager.buckets) > 2
    for _ in range(2):  # twice: the averager resets between steps
        grads_for(100 + rank)
        averager(params)
        for p, g in zip(params, expected, strict=True):
            torch.testing.assert_close(p.grad, g, rtol=1e-5, atol=1e-7)
    # a step is taken only if every rank can take it
    assert bool(averager.agree(torch.tensor(True))) is True
    assert bool(averager.agree(torch.tensor(rank == 0))) is False
    averager.close()
    grads_for(100 + rank)  # no hooks left: the local gradient stays local
    assert any(not torch.allclose(p.grad, g) for p, g in zip(params, expected, strict=True))
    lw = dist.all_gather_tensor(torch.full((3,), float(rank)))
    assert lw.tolist() == [0.0, 0.0, 0.0, 1.0, 1.0, 1.0]


def test_average_gradients_is_the_mean_over_ranks(tmp_path):
    _spawn(_check_gradient_mean, tmp_path)


class _Interrupt(Exception):
    pass


def _train(run_dir, interrupt_at=None, resume=False, **options):
    from flowvi import fit

    flow, target = _flow_and_target()

    def callback(state, metrics):
        if state.step == interrupt_at:
            raise _Interrupt

    fit(flow, target, steps=30, batch_size=32, checkpoint_every=10, log_every=5, run_dir=run_dir, resume=resume,
        progress=False, callback=callback, **options)  # fmt: skip
    return flow


def _check_fit_and_resume(rank, world, tmp):
    reference = _train(tmp / "a")
    # Every rank ends with the same parameters (averaged gradients, same optimizer state).
    flat = torch.cat([p.detach().reshape(-1) for p in reference.parameters()])
    gathered = [torch.empty_like(flat) for _ in range(world)]
    torch.distributed.all_gather(gathered, flat)
    assert all(torch.equal(gathered[0], g) for g in gathered)
    try:
        _train(tmp / "b", interrupt_at=25)
    except _Interrupt:
        pass
    resumed = _train(tmp / "b", resume=True)
    for a, b in zip(reference.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    if rank == 0:
        saved = torch.load(tmp / "b" / "checkpoint.pt", weights_only=False)
        assert len(saved["rng_ranks"]) == world
        # different ranks drew different samples
        assert not torch.equal(saved["rng_ranks"][0]["cpu"], saved["rng_ranks"][1]["cpu"])
        assert len((tmp / "a" / "metrics.jsonl").read_text().splitlines()) == 6


def test_two_process_fit_is_consistent_and_resumes_exactly(tmp_path):
    _spawn(_check_fit_and_resume, tmp_path)


FAB = {"estimator": "fab", "fab_stages": 2, "fab_leapfrog": 2, "fab_buffer": 64, "fab_replay": 3}


def _check_fab_resume(rank, world, tmp):
    """Each rank keeps its own FAB step sizes and replay buffer; the checkpoint holds every rank's."""
    reference = _train(tmp / "a", **FAB)
    try:
        _train(tmp / "b", interrupt_at=25, **FAB)
    except _Interrupt:
        pass
    resumed = _train(tmp / "b", resume=True, **FAB)
    for a, b in zip(reference.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    if rank == 0:
        a, b = (torch.load(tmp / d / "checkpoint.pt", weights_only=False)["estimator_ranks"] for d in "ab")
        assert len(a) == world and not torch.equal(a[0]["buffer"]["x"], a[1]["buffer"]["x"])
        for r in range(world):
            assert torch.equal(a[r]["buffer"]["log_w"], b[r]["buffer"]["log_w"])


def test_two_process_fab_resumes_every_ranks_buffer(tmp_path):
    _spawn(_check_fab_resume, tmp_path)


def _fit_command(out):
    return ["-m", "flowvi", "fit", "gaussian", "--dim", "4", "--steps", "20", "--batch-size", "32", "--layers", "2",
            "--hidden", "16", "--eval-samples", "2000", "--n-samples", "100", "--quiet", "--out", str(out)]  # fmt: skip


def test_torchrun_cli_fit(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           *_fit_command(out)]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-8000:]
    assert proc.stdout.count("flowvi fit: gaussian") == 1  # rank 0 alone prints
    config = json.loads((out / "config.json").read_text())
    assert config["world_size"] == 2
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n"] == 2000 and summary["steps"] == 20
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2


def test_torchrun_cli_fit_until_converged(tmp_path):
    """--steps auto under torchrun: the ranks' batch ELBOs differ, rank 0's stop decision holds for all (issue 20)."""
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    argv = [a for a in _fit_command(out) if a not in ("--steps", "20")] + ["--max-steps", "400"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", *argv]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-8000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stop_reason"] and summary["steps"] <= 400 and summary["steps"] % 100 == 0
    assert proc.stdout.strip().splitlines()[-1].startswith(("trustworthy", "not trustworthy"))


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_nodes_meet_through_the_c10d_rendezvous(tmp_path):
    """Two torchrun launchers, one process each, stand in for two machines: they meet through torchrun's c10d
    rendezvous (the multi-node command of docs/performance.md) and write one run directory (a shared file
    system), with the global rank 0 alone printing."""
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    endpoint = f"127.0.0.1:{_free_port()}"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
           "--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint, "--rdzv-id", "flowvi-test",
           *_fit_command(out)]  # fmt: skip
    nodes = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in "ab"]
    try:
        outputs = [node.communicate(timeout=180) for node in nodes]
    finally:
        for node in nodes:
            node.kill()
    for node, (_, err) in zip(nodes, outputs, strict=True):
        assert node.returncode == 0, err[-8000:]
    assert sum(stdout.count("flowvi fit: gaussian") for stdout, _ in outputs) == 1
    config = json.loads((out / "config.json").read_text())
    assert config["world_size"] == 2
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n"] == 2000 and summary["steps"] == 20
