"""sdekit first-party plugin: diagnostics (being written)."""
