"""Adversarial training with DRA: `train_cell(recipe, out_dir, state_dir, threads)`."""

from dra.training.loop import TrainingDataError, TrainingDivergedError, train_cell
from dra.training.recipe import RecipeError, load_recipe, validate_recipe

__all__ = ["train_cell", "load_recipe", "validate_recipe", "RecipeError", "TrainingDivergedError", "TrainingDataError"]
