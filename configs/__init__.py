"""The YAML configs, installed as package data (``importlib.resources.files("compress.configs")``)."""
