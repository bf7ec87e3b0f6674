"""Your own CNN module on real images, pruned three ways by compress's callbacks.

scikit-learn's handwritten digits (1,797 8x8 images, 10 classes, shipped inside the package) train a small
CNN the user wrote as a plain LightningModule, with no compress code in it. The same module then trains
once with each of

- `MagnitudePruning(target_sparsity=0.8)`: 80% of the Conv/Linear weights become exact zeros;
- `L1Sparsity(mode="proximal")`: an L1 penalty whose soft-thresholding makes weights exactly zero;
- `StructuredPruning(channel_ratio=0.5)`: half the conv channels and hidden units are removed, a
  physically smaller network.

None of them touches the output layer (``out``, found by tracing ``forward``, not by its name). Each run
prints its test accuracy, parameters and share of zero weights. Every run shuffles with
`compress.data.EpochShuffle` and has `ExactResume`, so a resumed run would end as the uninterrupted one.

    .venv/bin/python -m examples.prune_your_cnn       # 12 s on 2 quiet CPU cores

Measured 2026-12-02 (test accuracy on 359 held-out digits, 600 steps each): dense 0.992; magnitude 80%
0.992 with 78.7% of all Conv/Linear weights zero (the output layer stays dense); L1 proximal 0.986 with
46.0% zero; structured 50% 0.986 with 9,802 parameters instead of 38,282. One seed: a demonstration, not
a comparison.
"""

from __future__ import annotations

import argparse

import torch
from lightning.pytorch import LightningModule, Trainer, seed_everything
from lightning.pytorch.callbacks import Callback
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from compress.callbacks import ExactResume, L1Sparsity, MagnitudePruning, StructuredPruning
from compress.data import EpochShuffle


class DigitsCNN(LightningModule):
    """A user's module: two conv layers, a hidden layer, and ``out`` giving the ten classes."""

    def __init__(self, lr: float = 3e-3) -> None:
        super().__init__()
        self.lr = lr
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2), nn.Flatten(),
        )  # fmt: skip
        self.hidden = nn.Linear(32 * 4 * 4, 64)
        self.out = nn.Linear(64, 10)

    def forward(self, images):
        return self.out(torch.relu(self.hidden(self.features(images))))

    def training_step(self, batch, batch_idx):
        images, labels = batch
        return nn.functional.cross_entropy(self(images), labels)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.lr)


def digits(batch_size: int = 64, seed: int = 0) -> tuple[DataLoader, TensorDataset]:
    """Training batches (a resumable shuffle) and the held-out 20% of the digits."""
    data = load_digits()
    images = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.tensor(data.target)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    test, train = order[: len(order) // 5], order[len(order) // 5 :]
    train_set = TensorDataset(images[train], labels[train])
    sampler = EpochShuffle(len(train_set), seed=seed, batch_size=batch_size)
    return DataLoader(train_set, batch_size=batch_size, sampler=sampler), TensorDataset(
        images[test], labels[test]
    )


@torch.no_grad()
def evaluate(module: DigitsCNN, test: TensorDataset) -> dict[str, float]:
    module.eval()
    images, labels = test.tensors
    accuracy = float((module(images).argmax(-1) == labels).float().mean())
    weights = [m.weight for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    zeros = sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
    return {"accuracy": accuracy, "parameters": sum(p.numel() for p in module.parameters()), "zeros": zeros}


def run(steps: int = 600, seed: int = 0, quiet: bool = False) -> dict[str, dict[str, float]]:
    """Trains the dense CNN and the three pruned ones for ``steps`` steps each; returns what each reached."""
    methods: dict[str, list[Callback]] = {
        "dense": [],
        "magnitude 80%": [MagnitudePruning(target_sparsity=0.8, frequency=max(1, steps // 30))],
        "L1 proximal": [L1Sparsity(strength=0.05, mode="proximal", warmup_steps=steps // 4)],
        "structured 50%": [StructuredPruning(channel_ratio=0.5, at_step=steps // 2)],
    }
    results = {}
    for name, callbacks in methods.items():
        seed_everything(seed)
        module, (train, test) = DigitsCNN(), digits(seed=seed)
        trainer = Trainer(
            max_steps=steps, callbacks=[*callbacks, ExactResume()], logger=False, enable_checkpointing=False,
            enable_progress_bar=not quiet, enable_model_summary=False, accelerator="auto",
        )  # fmt: skip
        trainer.fit(module, train)
        results[name] = evaluate(module, test)
        print(f"{name:>15}: " + ", ".join(f"{k} {v:.3f}" if k != "parameters" else f"{k} {v:,}"
                                          for k, v in results[name].items()))  # fmt: skip
    return results


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    return run(args.steps, args.seed)


if __name__ == "__main__":
    main()
