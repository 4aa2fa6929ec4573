"""Data-parallel training with torch.distributed (one process per device, started by torchrun).

Every rank holds the same flow, draws its own batch from its own random stream (seed + rank), and
the gradients are averaged over ranks after the backward pass, so each step is a step on the
union of the batches: ``world_size * batch_size`` samples per step. Rank 0 alone prints, logs and
writes the run directory; evaluation gathers the importance log weights of every rank.

    torchrun --nproc-per-node 2 -m flowvi fit gaussian --dim 1000 --out runs/g2

Without torchrun (no ``WORLD_SIZE`` in the environment) every function here is the single-process
identity.
"""

from __future__ import annotations

import os
import time

import torch
import torch.distributed as td


def is_initialized() -> bool:
    return td.is_available() and td.is_initialized()


def world_size() -> int:
    return td.get_world_size() if is_initialized() else 1


def rank() -> int:
    return td.get_rank() if is_initialized() else 0


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_env(device: str | None = "auto") -> str:
    """Join the process group that torchrun describes in the environment and pick this rank's
    device: ``cuda:LOCAL_RANK`` with NCCL where CUDA is present (and ``device`` is not ``cpu``),
    else the CPU with gloo. Returns the device name."""
    use_cuda = torch.cuda.is_available() and device not in ("cpu",)
    if use_cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    else:
        device = "cpu"
    if not is_initialized():
        td.init_process_group(backend="nccl" if use_cuda else "gloo")
    return device


def shutdown() -> None:
    """Destroy the process group (also on an error path, where the ranks cannot meet first).

    The GIL is then released for a moment: a Gloo worker thread that frees a finished collective's
    tensor after Python has dropped it needs the GIL for that, and a thread that asks for it once the
    interpreter is finalizing is killed inside a C++ destructor, which aborts the process ("terminate
    called without an active exception"; the Gloo backend keeps its threads past
    ``destroy_process_group``, see pytorch/pytorch#179291)."""
    if is_initialized():
        td.destroy_process_group()
        time.sleep(0.05)


def leave() -> None:
    """The normal end of a distributed run: wait for every rank, then :func:`shutdown`.

    The ranks meet with an all-reduce of a tensor that stays referenced here until the group is gone,
    not with ``td.barrier()``: Gloo's barrier holds every earlier collective still in flight, and the
    thread that frees it at exit may have to free their tensors too (see :func:`shutdown`)."""
    if not is_initialized():
        return
    flag = torch.ones(1, device="cuda" if td.get_backend() == "nccl" else "cpu")
    td.all_reduce(flag)
    shutdown()
    del flag


def barrier() -> None:
    if is_initialized():
        td.barrier()


def broadcast_parameters(module: torch.nn.Module) -> None:
    """Make every rank start from rank 0's parameters and buffers."""
    for t in list(module.parameters()) + list(module.buffers()):
        td.broadcast(t.data, src=0)


COMM_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}  # all-reduce dtype of gradients


class GradientAverager:
    """Average gradients over ranks while the backward pass is still running.

    The parameters are grouped into buckets of about ``bucket_mb`` megabytes in reverse order (the
    order in which the backward pass produces their gradients). When the last gradient of a bucket
    has been accumulated, the bucket is flattened, divided by the world size, and its all-reduce
    starts asynchronously, so communication overlaps the rest of the backward pass (with a compiled
    step only when the flow is compiled layer by layer, see :mod:`flowvi.training.overlap`). Buckets start in
    index order on every rank. Calling the averager after the backward pass (it is the training
    step's ``grad_hook``) waits for all buckets and points each ``p.grad`` at its slice of the
    averaged buffer (no copy back). Call :meth:`close` to remove the hooks.

    ``comm_dtype='bf16'`` (or ``'fp16'``) compresses the communication: each bucket is divided by
    the world size in float32, cast to 16 bits, summed over ranks in 16 bits, and cast back, which
    halves the bytes sent and changes the numerics: the averaged gradient's relative error is about
    the 16-bit unit roundoff times the number of roundings (cast, then one per summation), for two
    ranks about 2 x 2^-8 = 8e-3 of ``mean_r |g_r|`` with bf16 (2 x 2^-11 = 1e-3 with fp16, whose range
    ends at 65504: an overflowing gradient becomes infinite and the step is skipped on every rank).
    """

    def __init__(self, params, bucket_mb: float = 25.0, comm_dtype: str = "fp32"):
        if comm_dtype not in COMM_DTYPES:
            raise ValueError(
                f"unknown gradient communication dtype {comm_dtype!r}; choose one of {', '.join(COMM_DTYPES)}"
            )
        self.comm_dtype = COMM_DTYPES[comm_dtype]
        self.params = [p for p in params if p.requires_grad]
        self.world = world_size()
        self.buckets, current, size = [], [], 0
        for p in reversed(self.params):
            current.append(p)
            size += p.numel() * p.element_size()
            if size >= bucket_mb * 2**20:
                self.buckets.append(current)
                current, size = [], 0
        if current:
            self.buckets.append(current)
        self.bucket_of = {p: i for i, bucket in enumerate(self.buckets) for p in bucket}
        self.handles = [p.register_post_accumulate_grad_hook(self._on_grad) for p in self.params]
        self._reset()

    def _reset(self):
        self.ready = [0] * len(self.buckets)
        self.next = 0
        self.pending = []

    def _on_grad(self, p):
        self.ready[self.bucket_of[p]] += 1
        while self.next < len(self.buckets) and self.ready[self.next] == len(self.buckets[self.next]):
            self._launch()

    def _launch(self):
        bucket = self.buckets[self.next]
        self.next += 1
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in bucket])
        flat.div_(self.world)
        sent = flat if self.comm_dtype is None else flat.to(self.comm_dtype)
        self.pending.append((td.all_reduce(sent, async_op=True), sent, flat, bucket))

    def __call__(self, params=None) -> None:
        while self.next < len(self.buckets):  # buckets with a parameter that got no gradient
            self._launch()
        for work, sent, flat, bucket in self.pending:
            work.wait()
            if sent is not flat:
                flat.copy_(sent)
            for p, part in zip(bucket, flat.split([p.numel() for p in bucket]), strict=True):
                p.grad = part.view_as(p)
        self._reset()

    def agree(self, ok: torch.Tensor) -> torch.Tensor:
        """``ok`` and-ed over the ranks, so that all ranks skip a non-finite step together (a rank
        whose loss is not finite while its gradients are would otherwise step alone)."""
        flag = ok.to(torch.float32).reshape(1)
        td.all_reduce(flag, op=td.ReduceOp.MIN)
        return flag[0] > 0

    def close(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []


def all_gather_tensor(t: torch.Tensor) -> torch.Tensor:
    """Concatenation over ranks of equally shaped tensors (along the first dimension)."""
    if world_size() == 1:
        return t
    parts = [torch.empty_like(t) for _ in range(world_size())]
    td.all_gather(parts, t.contiguous())
    return torch.cat(parts)


def all_gather_objects(obj) -> list:
    """``[obj of rank 0, obj of rank 1, ...]`` (pickled; for small things such as RNG states)."""
    out = [None] * world_size()
    td.all_gather_object(out, obj)
    return out


def evaluate(flow, target, n: int = 100_000, batch_size: int = 10_000) -> dict:
    """:func:`flowvi.diagnostics.evaluate.evaluate` with the ``n`` draws shared out over the ranks: each rank
    computes its share of the importance log weights, and all of them are gathered (every rank
    returns the same summary)."""
    from flowvi.diagnostics.evaluate import evaluate as evaluate_flow

    return evaluate_flow(flow, target, n, batch_size, shard=(rank(), world_size(), all_gather_objects))
