"""Config schema, recipe loading, overrides and validation."""
from vislab.config.load import ConfigError, load_config, model_kwargs, parse_overrides, schema_keys, to_yaml
from vislab.config.schema import Config

__all__ = ["Config", "ConfigError", "load_config", "model_kwargs", "parse_overrides", "schema_keys", "to_yaml"]
