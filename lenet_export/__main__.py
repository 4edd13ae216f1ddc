"""``python -m lenet_export`` runs the CLI (same as the ``lenet-export`` script)."""

from lenet_export.cli import app

if __name__ == "__main__":
    app()
