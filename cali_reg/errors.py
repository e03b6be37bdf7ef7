"""The one kind of error a user sees: a single line, never a traceback."""

from __future__ import annotations

import sys
from collections.abc import Callable


class UserError(Exception):
    """A mistake the user can fix; reported as one line, never as a traceback."""


class ModelFileError(UserError):
    """A model file that cannot be trusted: missing, corrupt, truncated or foreign."""


def run(main: Callable[[], object]) -> None:
    """Call ``main()``; report a UserError as one line on stderr and exit 2."""
    try:
        main()
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)
