"""Chat platform adapters, one module per platform; each registers through ``botkit_register_adapters``."""
