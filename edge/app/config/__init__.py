"""The runtime configuration: one TOML file, typed, validated once at start.

- :mod:`~edge.app.config.schema`: every section and key, with its type, default, one-line
  documentation and checks (:class:`~edge.app.config.schema.RuntimeConfig`), and the config as
  plain data (``config_to_dict``, ``field_docs``);
- :mod:`~edge.app.config.load`: reading TOML, the layers (defaults < device profile < file <
  command line), every value checked against the schema and the rules across fields:
  ``load_config``, ``apply_overrides``, ``source_overrides``, and ``python -m edge.config``
  (``poseface config``);
- :mod:`~edge.app.config.profiles`: where a device profile named by a config is found;
- :mod:`~edge.app.config.errors`: :class:`~edge.app.config.errors.ConfigError`, one line
  ``FILE: key.path: expected ..., got ...``, and what the checks share to word it.
"""
