"""Every ``compress`` command, and nothing else: library code never imports this package.

``compress fit | validate | test | predict`` (LightningCLI over any LightningModule), ``compress pipeline``
(``compress demo``: the packaged default pipeline), ``compress multitask``, ``compress export``.
"""

from compress.commands.main import main

__all__ = ["main"]
