"""The twistd programs (see twisted/plugins/remotedialer_plugins.py)."""
