"""The OpenAI-compatible co-serving server (`jgraph serve`): inference and LoRA finetuning jobs
over HTTP on one engine.

`ServeConfig` says what to serve, `CoServeService` runs the engine thread, the request
streams and the finetuning jobs, `make_app` wraps it in a FastAPI app, and `serve` runs that
with uvicorn (`ServerThread` runs it on a background thread). Needs the ``serve`` extra (FastAPI, uvicorn, prometheus-client, jinja2).

Example:
    >>> from jgraph.coserve.serve import ServeConfig, serve
    >>> serve(ServeConfig(model="tiny", state_dir="/tmp/jgraph-serve"))  # doctest: +SKIP

    then, from another shell::

        curl http://127.0.0.1:8000/v1/completions -H 'Content-Type: application/json' \\
            -d '{"model": "tiny", "prompt": "Hello", "max_tokens": 8, "temperature": 0}'
"""

from jgraph.coserve._chat import DEFAULT_CHAT_TEMPLATE as DEFAULT_CHAT_TEMPLATE
from jgraph.coserve._serve_config import API_KEY_ENV as API_KEY_ENV
from jgraph.coserve._serve_config import Runtime as Runtime
from jgraph.coserve._serve_config import ServeConfig as ServeConfig
from jgraph.coserve._serve_config import default_coserve as default_coserve
from jgraph.coserve._serve_config import load_runtime as load_runtime
from jgraph.coserve._server import make_app as make_app
from jgraph.coserve._service import CoServeService as CoServeService
from jgraph.coserve._uvicorn import ServerThread as ServerThread
from jgraph.coserve._uvicorn import serve as serve

__all__ = [
    "API_KEY_ENV",
    "DEFAULT_CHAT_TEMPLATE",
    "CoServeService",
    "Runtime",
    "ServeConfig",
    "ServerThread",
    "default_coserve",
    "load_runtime",
    "make_app",
    "serve",
]
