"""The floor: the least a relay on the edge's own stack does (BlackSheep, uvicorn with httptools, uvloop, aiohttp).

Benchmark-only. It reads the body, parses it, forwards it, reads the answer and parses its
usage; no key, no checks, no metering, no error handling. What the edge costs beyond it is
the edge's own work. Run as ``python -m bench.floor --http 127.0.0.1:8082 --upstream-url URL``.
"""

from __future__ import annotations

import argparse

import aiohttp
import orjson
import uvicorn
from blacksheep import Application, Content, Request, Response


def floor_app(upstream_url: str) -> Application:
    app = Application()
    url = upstream_url.rstrip("/") + "/chat/completions"
    session: list[aiohttp.ClientSession] = []

    async def start(app: Application) -> None:
        session.append(aiohttp.ClientSession())

    async def stop(app: Application) -> None:
        await session.pop().close()

    async def chat_completions(request: Request) -> Response:
        body = orjson.loads(await request.read() or b"{}")
        headers = {"content-type": "application/json"}
        async with session[0].post(url, data=orjson.dumps(body), headers=headers) as answer:
            raw = await answer.read()
        orjson.loads(raw).get("usage")
        return Response(answer.status, None, Content(b"application/json", raw))

    app.on_start += start
    app.on_stop += stop
    app.router.add_post("/v1/chat/completions", chat_completions)
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.floor", description=__doc__)
    parser.add_argument("--http", required=True, help="HOST:PORT to listen on")
    parser.add_argument("--upstream-url", required=True, help="OpenAI-compatible base URL")
    args = parser.parse_args(argv)
    host, _, port = args.http.rpartition(":")
    app = floor_app(args.upstream_url)
    uvicorn.run(app, host=host, port=int(port), loop="uvloop", http="httptools", access_log=False, log_level="warning")


if __name__ == "__main__":
    main()
