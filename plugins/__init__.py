"""botkit's first-party plugins (installed as ``botkit.plugins``), one module or small package each."""
