"""`emovlm-kd serve`: a trained run over HTTP (classify API, OpenAI-compatible chat, web page)."""

from __future__ import annotations

import argparse
from pathlib import Path

from emovlm_kd.apps.cli.flags import (
    add_config_flags,
    add_dtype_flag,
    config_from_flags,
    inference_dtype,
)
from emovlm_kd.apps.server.config import ServerConfig
from emovlm_kd.errors import UserError


def register(subparsers, help_text: str) -> None:
    parser = subparsers.add_parser("serve", help=help_text, description=help_text)
    parser.add_argument("--run", required=True, help="a trained run folder")
    # One flag per ServerConfig field, with its default and help.
    add_config_flags(parser, ServerConfig)
    add_dtype_flag(parser)
    parser.set_defaults(func=execute)


def require_serving_packages() -> None:
    """Raise a `UserError` naming the first package of the `serve` extra that is missing."""
    try:
        import fastapi  # noqa: F401
        import prometheus_client  # noqa: F401
        import python_multipart  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as missing:
        raise UserError(f"serving needs the {missing.name} package; install it with: pip install 'emovlm-kd[serve]'") from None


def execute(args: argparse.Namespace) -> int:
    require_serving_packages()
    import uvicorn

    from emovlm_kd.apps.server.app import create_app, listening_socket
    from emovlm_kd.pipeline import EmoVLMKD

    config = config_from_flags(ServerConfig, args)
    if config.model_name is None:
        config.model_name = Path(args.run).resolve().name
    # Bound first: a taken port or a wrong host is said at once, not after the model loads.
    with listening_socket(config.host, config.port) as listener:
        model = EmoVLMKD.from_pretrained(args.run, dtype=inference_dtype(args.dtype))
        app = create_app(model, config)
        host = f"[{config.host}]" if ":" in config.host else config.host
        print(f"serving {args.run} as {config.model_name!r} on http://{host}:{listener.getsockname()[1]}/ "
              "(Ctrl+C stops)", flush=True)
        uvicorn.Server(uvicorn.Config(app, log_level="info" if args.verbose else "warning")).run(sockets=[listener])
    return 0
