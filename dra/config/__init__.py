"""The workflow's configuration: validation, cells, paths, and the resolved recipe of a cell.

The Snakefile and the tests share these functions, so a path or a recipe is computed in one
place only. A cell is one trained model of a table, named by its path
``<dataset>/<arch>/<method>/<budget>`` with ``budget = syn<set>-bs<batch>-ep<epochs>`` or
``nosyn-bs<batch>-ep<epochs>``. A replicate of a cell trained with another seed carries the seed
at the end of its budget (``syn2k-bs128-ep30-seed2``); the plain budget is trained with config's
``seed``, so a table that runs one seed names the same paths as before replicates existed.

Its sections, each a module, every one below the next (none imports torch: the Snakemake process
reads them):

- core: ``Cell`` and ``parse_cell``, ``ConfigError`` and the line that says where to fix a mistake;
- files: config files read strictly (``load_config_file``, ``typed_overrides``);
- downloads: every download entry, its name and source, the lock file;
- cells: the cells of tables and figures and the paths of stores, features, checkpoints and cells;
- sizes: sizes, ranges and the cells a table or figure names, which the schema cannot check;
- recipe: the resolved recipe of a cell and the cell's GPU plan;
- jobs: every other GPU job of the configuration and the batch it runs at (planned by dra.gpu_plan);
- validation: ``validate_config``, the JSON schema (``load_schema``, with each model family's keys from the
  registry: ``family_keys``) and the references between sections.

Callers import every name from here (``from dra import config as cfg``; ``cfg.cell_dir(...)``).
"""

from dra.config.core import BUDGET_PATTERN, HOW_TO_FIX, Cell, ConfigError, parse_cell
from dra.config.files import check_config_files, load_config_file, typed_overrides
from dra.config.downloads import check_download_lock, download_entries, download_fields, download_name, is_random
from dra.config.cells import (
    DEFAULT_TABLE_KIND, REFERENCE_PREFIX, cell_dir, cell_replicates, diffusion_checkpoint, feature_store,
    feature_views, figure_cells, figure_models, model_dataset, pretrained_weights, reads_imagenet_folder, replicate,
    results_dir, runnable_cells, split_store, synthetic_is_generated, synthetic_size, synthetic_store, table_cells,
    table_kind, table_result_files, table_seeds, table_spec, tables_of_kind, unset_source_key, uses_edm,
)
from dra.config.sizes import SPLIT_SIZES, dra_target_model, split_sizes
from dra.config.recipe import diffusion_feature, resolve_arch, resolve_recipe, train_plan, training_steps
from dra.config.jobs import VAVAE_RESOLUTION, classifier_of, gpu_jobs, job_batches, job_plans, memory_network
from dra.config.validation import SCHEMA_PATH, family_keys, json_ready, load_schema, validate_config

__all__ = [
    "SCHEMA_PATH", "BUDGET_PATTERN", "HOW_TO_FIX", "ConfigError", "Cell", "parse_cell", "load_schema", "json_ready",
    "family_keys", "validate_config", "is_random", "download_entries", "download_fields", "download_name",
    "check_download_lock",
    "SPLIT_SIZES", "split_sizes", "dra_target_model", "REFERENCE_PREFIX", "results_dir", "table_seeds", "replicate",
    "cell_replicates", "DEFAULT_TABLE_KIND", "table_kind", "tables_of_kind", "table_result_files", "table_cells",
    "figure_models", "figure_cells", "model_dataset", "cell_dir", "synthetic_is_generated", "synthetic_store",
    "synthetic_size", "uses_edm", "reads_imagenet_folder", "unset_source_key", "runnable_cells", "table_spec",
    "split_store", "pretrained_weights", "diffusion_checkpoint", "feature_views", "feature_store",
    "diffusion_feature", "resolve_arch", "training_steps", "train_plan", "resolve_recipe", "load_config_file",
    "check_config_files", "typed_overrides", "VAVAE_RESOLUTION", "classifier_of", "gpu_jobs", "job_batches",
    "job_plans", "memory_network",
]
