"""Composition root: settings, CLI, migrations, simulator, benchmark."""
