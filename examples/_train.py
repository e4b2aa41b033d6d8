"""The training loop and accuracy shared by the examples (plain PyTorch: the same loop trains the
float model and, after ``linger.init``, the quantized one)."""

import torch
import torch.nn.functional as F


def fit(model, xtr, ytr, epochs: int, lr: float, seed: int = 0, batch_size: int = 64):
    """Adam + cross-entropy over shuffled mini-batches, cosine learning rate per step."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps = epochs * ((len(xtr) + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(steps, 1))
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(xtr), generator=g)
        for i in range(0, len(xtr), batch_size):
            idx = perm[i:i + batch_size]
            loss = F.cross_entropy(model(xtr[idx]), ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return model


def accuracy(model, x, y) -> float:
    """Top-1 accuracy in percent, in eval mode (integer arithmetic for a quantized model)."""
    model.eval()
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item() * 100
