"""pytest-quant: LLM quantization quality as gating pytest tests.

Importing this package (and its pytest plugin module) never imports torch: the plugin is loaded
into every pytest run of a repository that installs it.
"""

__version__ = "0.1.0"
