"""Command line of the server: ``python -m serve --model FOLDER [--host --port --api-key-env ...]``.

Example::

    CPT_API_KEY=secret python -m serve --model runs/search/checkpoints/step-1000 --name cpt-search \
        --api-key-env CPT_API_KEY --max-batch-tokens 16384 --max-wait-ms 5
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from serve import DEFAULT_PACK_TOKENS, DEFAULT_RETURN_WAIT_MS, DEFAULT_RETURN_WAIT_TOKENS


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m serve", description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="checkpoint, training run folder or export folder")
    parser.add_argument("--name", default=None, help="served model name NAME (default: the folder's name)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--api-key-env", default=None, help="environment variable holding the bearer API key")
    parser.add_argument("--log-level", default="info")
    parser.add_argument(
        "--access-log", choices=["on", "off"], default="on", help="one JSON line per request (logger serve.access)"
    )
    add_model_arguments(parser.add_argument_group("model"))
    add_batching_arguments(parser.add_argument_group("micro-batching"))
    add_limit_arguments(parser.add_argument_group("limits and shutdown"))
    return parser.parse_args(argv)


def add_model_arguments(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--max-length", type=int, default=512, help="longest row the model runs, delimiters included")
    group.add_argument("--device", default="cpu")
    group.add_argument(
        "--precision",
        choices=["fp32", "bf16"],
        default="fp32",
        help="bf16: torch.autocast, the Linear weights cast to bf16 once (the same vectors)",
    )
    group.add_argument(
        "--backend", choices=["torch", "onnx", "onnx-int8"], default="torch", help="onnx: the export's ONNX graphs"
    )
    group.add_argument("--torch-threads", type=int, default=None, help="intra-op threads (default: torch's)")


def add_batching_arguments(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--max-batch-tokens", type=int, default=16384, help="padded tokens per micro-batch")
    group.add_argument(
        "--max-wait-ms",
        type=float,
        default=5.0,
        help="wait for more rows after a batch's first (with --return-wait-ms: only while unexpected requests come)",
    )
    group.add_argument(
        "--return-wait-ms",
        type=float,
        default=DEFAULT_RETURN_WAIT_MS,
        help="a batch also waits up to this long for keep-alive clients just answered that are expected back; 0: never",
    )
    group.add_argument(
        "--return-wait-tokens",
        type=int,
        default=DEFAULT_RETURN_WAIT_TOKENS,
        help="a micro-batch with this many real tokens stops waiting for clients expected back",
    )
    group.add_argument("--max-batch-size", type=int, default=256, help="rows per micro-batch")
    group.add_argument(
        "--pack-tokens",
        type=int,
        default=DEFAULT_PACK_TOKENS,
        help="torch backend: each micro-batch in one padding-free call, rows packed into sequences of at most this "
        "many tokens (0: length chunks of padded rows, as the ONNX backends always run)",
    )
    group.add_argument(
        "--call-overhead-tokens",
        type=lambda text: None if text == "auto" else float(text),
        default=0.0,
        help="padded tokens one forward call is worth when cutting a micro-batch by length (auto: measured at start)",
    )


def add_limit_arguments(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--max-queued-rows", type=int, default=65536, help="queued rows beyond this answer 429")
    group.add_argument(
        "--max-body-bytes", type=int, default=None, help="larger bodies answer 413 (default: 300,000 tokens x 32 bytes)"
    )
    group.add_argument("--body-timeout-s", type=float, default=30.0, help="a body slower to arrive answers 408")
    group.add_argument(
        "--header-timeout-s", type=float, default=10.0, help="request line and headers slower to arrive answer 408"
    )
    group.add_argument(
        "--graceful-shutdown-s",
        type=float,
        default=5.0,
        help="at SIGTERM, requests in flight get this long; those still running near its end are answered 503",
    )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    api_key = None
    if args.api_key_env:
        api_key = os.environ.get(args.api_key_env)
        if not api_key:
            sys.exit(f"--api-key-env {args.api_key_env}: that environment variable is not set or empty")

    from serve.app import Settings, create_app
    from serve.lifecycle import run_server

    settings = Settings(
        model=args.model,
        name=args.name,
        api_key=api_key,
        max_batch_tokens=args.max_batch_tokens,
        max_wait_ms=args.max_wait_ms,
        return_wait_ms=args.return_wait_ms,
        return_wait_tokens=args.return_wait_tokens,
        max_batch_size=args.max_batch_size,
        max_queued_rows=args.max_queued_rows,
        max_length=args.max_length,
        device=args.device,
        precision=args.precision,
        backend=args.backend,
        access_log=args.access_log == "on",
        torch_threads=args.torch_threads,
        body_timeout_s=args.body_timeout_s,
        graceful_shutdown_s=args.graceful_shutdown_s,
        header_timeout_s=args.header_timeout_s,
        call_overhead_tokens=args.call_overhead_tokens,
        pack_tokens=args.pack_tokens or None,
        **({"max_body_bytes": args.max_body_bytes} if args.max_body_bytes is not None else {}),
    )
    run_server(create_app(settings), host=args.host, port=args.port, log_level=args.log_level)


if __name__ == "__main__":
    main()
