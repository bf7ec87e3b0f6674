"""The ``compress`` entry point: one table of commands, each parsed by jsonargparse (LightningCLI for the
Trainer subcommands).

Example:
    compress fit --config configs/examples/finetune_teacher.yaml
    compress fit --config configs/examples/distill.yaml --print_config
    compress demo                      # = compress pipeline with the packaged default pipeline
    compress pipeline --config configs/pipelines/tiny.yaml
    compress multitask --config configs/multitask/three_tasks.yaml
    compress export --model runs/default/stages/pruned/model --output runs/my_export --int8 true
    compress prune --model smollm2-135m --output runs/pruned --remove_layers 10
"""

from __future__ import annotations

import sys
from importlib import import_module

# command -> (module whose main(argv, prog) runs it, one line of help)
COMMANDS: dict[str, tuple[str, str]] = {
    "pipeline": ("compress.commands.pipeline.run", "run a pipeline YAML: stages reused, resumed or rerun"),
    "demo": ("compress.commands.pipeline.run", "the default pipeline (real teacher and data, CPU)"),
    "multitask": ("compress.commands.multitask", "one adapter and head per task on a frozen base"),
    "export": ("compress.commands.export", "a trained model as stock HF folder, ONNX, int8, adapters"),
    "prune": ("compress.commands.prune", "a causal LM pruned in depth, width or one-shot sparsity"),
}
TRAINER_COMMANDS = ("fit", "validate", "test", "predict")


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else list(argv)
    if args and args[0] in COMMANDS:
        import_module(COMMANDS[args[0]][0]).main(args[1:], prog=f"compress {args[0]}")
    elif args and args[0] in ("-h", "--help"):
        print(usage())
    else:
        from compress.commands.lightning_cli import CompressCLI

        CompressCLI(args=args)


def usage() -> str:
    lines = ["usage: compress COMMAND [--help] [options]", "", "commands:"]
    lines += [f"  {name:<10} LightningCLI: Trainer.{name} of a LightningModule" for name in TRAINER_COMMANDS]
    lines += [f"  {name:<10} {help_text}" for name, (_, help_text) in COMMANDS.items()]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
