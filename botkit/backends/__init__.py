"""Model backends, one module per engine; each registers itself through ``botkit_register_backends``."""
