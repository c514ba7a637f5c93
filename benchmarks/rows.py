"""One JSON row of a benchmark: printed as soon as it exists and, with ``--json PATH``, appended to PATH
through the project's atomic writer (``vstar_jax.io.atomic.append_text``), so a run stopped midway keeps
every row it measured."""
from __future__ import annotations

import json

from vstar_jax.io.atomic import append_text


def emit(row: dict, path=None) -> None:
    """Print ``row`` as one JSON line and append it to ``path`` when one is given."""
    line = json.dumps(row)
    print(line, flush=True)
    if path:
        append_text(path, line + "\n")
