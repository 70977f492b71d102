"""mimkd: knowledge distillation for PyTorch, headlined by MIMKD."""

__version__ = "0.1.0"
