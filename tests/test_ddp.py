"""DistributedDataParallel: every rank keeps the same quantization state and exports the same model.

Two CPU processes (gloo) train a linger model wrapped in DDP on *different* data shards, with
``broadcast_buffers=False`` so that DDP itself does not copy rank 0's buffers over the others:
equality can only come from linger reducing its statistics across ranks (range statistics and
op-site statistics by max, BatchNorm running statistics from the summed moments).
"""

import importlib
import os
import socket
import sys
import warnings

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

STEPS = 4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, outdir: str, device_path: bool) -> None:
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        import linger
        from linger.examples_models import SmallResNet, set_seed
        from linger.quant.functions import tensor_path
        set_seed(0)  # the same initial weights on every rank
        model = linger.init(SmallResNet(widths=(4, 8, 8)))  # BN, residual adds (op sites)
        with warnings.catch_warnings():  # torch 2.13 suggests forward_sync_buffers, which would
            warnings.simplefilter("ignore", FutureWarning)  # still sync once at init
            ddp = torch.nn.parallel.DistributedDataParallel(model, broadcast_buffers=False)
        opt = torch.optim.SGD(ddp.parameters(), lr=0.05, momentum=0.9)
        data = torch.Generator().manual_seed(100 + rank)  # this rank's shard
        local_max, first_range = [], None
        for step in range(STEPS):
            x = torch.randn(8, 3, 16, 16, generator=data) * (1.0 + rank)
            y = torch.randint(0, 10, (8,), generator=data)
            local_max.append(float(x.abs().max()))
            with tensor_path(device_path):  # the GPU code path (NCCL would run it), on the CPU
                loss = torch.nn.functional.cross_entropy(ddp(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if step == 0:
                first_range = float(model.stem[0].input_range)
        x_export = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(7))
        onnx_bytes = linger.onnx.export(model, x_export, None).SerializeToString()
        torch.save({"state": model.state_dict(), "onnx": onnx_bytes, "local_max": local_max,
                    "first_range": first_range}, os.path.join(outdir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
@pytest.mark.parametrize("device_path", [False, True], ids=["cpu_path", "device_path"])
def test_ddp_ranks_hold_identical_state_and_export_identical_models(tmp_path, device_path):
    here = os.path.dirname(os.path.abspath(__file__))
    if here not in sys.path:  # spawned processes import this module by name to find _worker
        sys.path.insert(0, here)
    worker = importlib.import_module("test_ddp")._worker
    mp.spawn(worker, args=(2, _free_port(), str(tmp_path), device_path), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1))

    assert r0["local_max"] != r1["local_max"]  # the shards really differ
    # after the first step the input range is the larger of the two ranks' batch maxima
    assert r0["first_range"] == r1["first_range"] == \
        float(torch.tensor(max(r0["local_max"][0], r1["local_max"][0])))
    s0, s1 = r0["state"], r1["state"]
    assert s0.keys() == s1.keys()
    assert any(".linger_iq." in k for k in s0)  # op sites (residual adds) are covered too
    differing = [k for k in s0 if not torch.equal(s0[k], s1[k])]
    assert differing == []
    assert r0["onnx"] == r1["onnx"]
