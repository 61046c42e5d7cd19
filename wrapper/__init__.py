"""lfwrap: fine-tune an open LLM with LLaMA-Factory and serve it behind an OpenAI-compatible endpoint."""

__version__ = "0.1.0"
