"""cali-reg pipeline stages: one module per DVC stage, run as ``python -m stages.NAME``."""
