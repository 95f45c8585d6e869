"""The kit: one command rolls out a production-shaped Moodle."""
from pathlib import Path

__version__ = "0.1.0"

#: The repository root: images/ and playbooks/ live beside the package.
ROOT = Path(__file__).resolve().parent.parent
