"""The workflow's configuration (the package's modules are its sections); see dra/config/validation.py."""

from dra.config.validation import (
    SCHEMA_PATH, BUDGET_PATTERN, HOW_TO_FIX, ConfigError, Cell, parse_cell, load_schema, json_ready,
    validate_config, is_random, download_entries, download_fields, download_name, check_download_lock,
    SPLIT_SIZES, split_sizes, dra_target_model, REFERENCE_PREFIX, results_dir, table_seeds, replicate,
    cell_replicates, DEFAULT_TABLE_KIND, table_kind, tables_of_kind, table_result_files, table_cells,
    figure_models, figure_cells, model_dataset, cell_dir, synthetic_is_generated, synthetic_store,
    synthetic_size, uses_edm, reads_imagenet_folder, unset_source_key, runnable_cells, table_spec,
    split_store, pretrained_weights, diffusion_checkpoint, feature_views, feature_store, diffusion_feature,
    resolve_arch, training_steps, train_plan, resolve_recipe, load_config_file, check_config_files,
    typed_overrides,
)

__all__ = [
    'SCHEMA_PATH', 'BUDGET_PATTERN', 'HOW_TO_FIX', 'ConfigError', 'Cell', 'parse_cell', 'load_schema',
    'json_ready', 'validate_config', 'is_random', 'download_entries', 'download_fields', 'download_name',
    'check_download_lock', 'SPLIT_SIZES', 'split_sizes', 'dra_target_model', 'REFERENCE_PREFIX',
    'results_dir', 'table_seeds', 'replicate', 'cell_replicates', 'DEFAULT_TABLE_KIND', 'table_kind',
    'tables_of_kind', 'table_result_files', 'table_cells', 'figure_models', 'figure_cells', 'model_dataset',
    'cell_dir', 'synthetic_is_generated', 'synthetic_store', 'synthetic_size', 'uses_edm',
    'reads_imagenet_folder', 'unset_source_key', 'runnable_cells', 'table_spec', 'split_store',
    'pretrained_weights', 'diffusion_checkpoint', 'feature_views', 'feature_store', 'diffusion_feature',
    'resolve_arch', 'training_steps', 'train_plan', 'resolve_recipe', 'load_config_file',
    'check_config_files', 'typed_overrides',
]
