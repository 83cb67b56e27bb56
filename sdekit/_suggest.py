"""The one "did you mean" helper, for names and options alike."""

import difflib
from collections.abc import Iterable


def did_you_mean(word: object, choices: Iterable[str], n: int = 1) -> str:
    """`" Did you mean 'x'?"` for the choices closest to `word`, or `""` if none is close.

    Closeness is `difflib`'s ratio, at least 0.5, so a typo (`bta` for `beta`) is caught
    and an unrelated word is not matched to anything.
    """
    close = difflib.get_close_matches(str(word), list(choices), n=n, cutoff=0.5)
    return f" Did you mean {' or '.join(map(repr, close))}?" if close else ""
