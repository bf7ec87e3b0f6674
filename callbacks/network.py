"""Which submodule of a LightningModule a callback acts on when it needs the network itself."""

from __future__ import annotations

from lightning.pytorch import LightningModule
from torch import nn

DEFAULT_ATTRIBUTES = ("student", "model")  # compress's DistillationModule / TaskModule, and the usual name


def trained_network(pl_module: LightningModule, attribute: str | None = None) -> nn.Module | None:
    """``pl_module.<attribute>`` if given, else its ``student`` or ``model`` submodule; None if absent.

    Example:
        >>> from torch import nn
        >>> module = LightningModule()
        >>> module.model = nn.Linear(2, 2)
        >>> trained_network(module) is module.model, trained_network(module, "net")
        (True, None)
    """
    for name in [attribute] if attribute else DEFAULT_ATTRIBUTES:
        network = getattr(pl_module, name, None)
        if isinstance(network, nn.Module):
            return network
    return None
