"""``sumi serve``: an OpenAI-compatible HTTP server (FastAPI + uvicorn) with request batching.

    from sumi.serve import ServeConfig, create_app
    app = create_app(model, tokenizer, ServeConfig(api_key="secret"))

See ``docs/serving.md`` for the endpoints, options, limits and measured throughput.
"""

from sumi.serve.app import ServeConfig, create_app
from sumi.serve.protocol import APIError, Limits

__all__ = ["APIError", "Limits", "ServeConfig", "create_app"]
