"""The distill-then-adapt pipeline: stages from one YAML, each with a manifest, rerun only when changed."""

from compress.commands.pipeline.config import Pipeline, Stage, load_pipeline
from compress.commands.pipeline.run import run_pipeline

__all__ = ["Pipeline", "Stage", "load_pipeline", "run_pipeline"]
