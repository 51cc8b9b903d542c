"""``python -m loralens.cli``: the ``loralens`` command."""

from loralens.cli import script

script()
