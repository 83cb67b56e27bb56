from typing import Any

Spec = str | dict[str, Any] | Any
"""A part: a registered name, a `{"name": ..., **options}` dict, or an object."""
