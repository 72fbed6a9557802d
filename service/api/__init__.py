"""The HTTP surface: routes, pydantic request/response schemas, dependencies (settings, runtime)."""
